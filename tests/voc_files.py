"""Writes small VOC-format folders (xml, split file, tiny images) for the VOC tests.

``objects`` per image: ``(name, xmin, ymin, xmax, ymax, difficult)`` in the xml's 1-based
inclusive pixels; ``difficult=None`` leaves the tag out.
"""
import os

import cv2
import numpy as np


def object_xml(name, xmin, ymin, xmax, ymax, difficult=0):
    diff = "" if difficult is None else f"\n    <difficult>{int(difficult)}</difficult>"
    return (f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>0</truncated>{diff}\n    <bndbox>\n      <xmin>{xmin}</xmin>\n"
            f"      <ymin>{ymin}</ymin>\n      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n"
            f"    </bndbox>\n  </object>\n")


def annotation_xml(image_id, height, width, objects, size=True):
    size_xml = (f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n"
                f"    <depth>3</depth>\n  </size>\n") if size else ""
    body = "".join(object_xml(*o) for o in objects)
    return (f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{image_id}.jpg</filename>\n"
            f"{size_xml}  <segmented>0</segmented>\n{body}</annotation>\n")


def write_voc(root, images, split="test", ext=".jpg", size=True):
    """``images``: {image_id: (height, width, objects)}; returns ``root`` (the year folder)."""
    root = str(root)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, (h, w, objects) in images.items():
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(annotation_xml(image_id, h, w, objects, size=size))
        img = np.full((h, w, 3), 90, np.uint8)
        cv2.imwrite(os.path.join(root, "JPEGImages", image_id + ext), img)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "a") as f:
        f.write("".join(f"{i}\n" for i in images))
    return root
