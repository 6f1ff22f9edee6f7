"""LightingNoise (PCA colour shift) and Resize with an interpolation drawn per image."""
import cv2
import numpy as np
import pytest

from crowdloss.data import Annotations
from crowdloss.data.transforms import LightingNoise, Resize, build_transforms
from crowdloss.data.transforms.photometric import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC


def annos():
    return Annotations(np.array([[2, 3, 20, 30]], dtype=np.float32), np.array([0]))


def test_lighting_noise_shifts_every_pixel_by_the_pca_colour_in_channel_order():
    image = np.full((6, 7, 3), 100, dtype=np.uint8)
    image[0, 0] = (0, 128, 255)
    a = annos()
    rgb = LightingNoise(std=1.0, prob=1.0, image_format="RGB")
    out, out_annos = rgb(image, a, np.random.default_rng(3))
    alpha = np.random.default_rng(3)
    alpha.random()
    alpha = alpha.normal(0.0, 1.0, 3)
    shift = np.asarray(IMAGENET_PCA_EIGVEC) @ (alpha * np.asarray(IMAGENET_PCA_EIGVAL))
    assert np.abs(shift).max() > 5  # std 1: tens of levels, visible in uint8
    expected = np.clip(np.rint(image.astype(np.float64) + shift), 0, 255)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1  # float32 rounding
    assert out.dtype == np.uint8 and out_annos is a
    # BGR: the same colour shift lands on the reversed channels.
    bgr, _ = LightingNoise(std=1.0, prob=1.0, image_format="BGR")(
        image[..., ::-1].copy(), a, np.random.default_rng(3))
    assert np.array_equal(bgr[..., ::-1], out)


def test_lighting_noise_probability_and_checks():
    image = np.full((4, 4, 3), 50, dtype=np.uint8)
    never = LightingNoise(prob=0.0)
    assert never(image, annos(), np.random.default_rng(0))[0] is image
    applied = sum(not np.array_equal(LightingNoise(std=1.0, prob=0.5)(
        image, annos(), np.random.default_rng(s))[0], image) for s in range(200))
    assert 70 < applied < 130
    with pytest.raises(ValueError, match="image_format"):
        LightingNoise(image_format="HSV")
    with pytest.raises(ValueError, match="3 x 3"):
        LightingNoise(eigvec=[[1, 0], [0, 1]])
    assert type(build_transforms([("LightingNoise", dict(std=0.1))]).transforms[0]) is \
        LightingNoise


def test_resize_draws_its_interpolation_per_image_when_given_a_list():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    flags = (cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_CUBIC,
             cv2.INTER_LANCZOS4)
    resize = Resize(height=24, width=24, interp=flags)
    by_flag = {f: cv2.resize(image, (24, 24), interpolation=f).tobytes() for f in flags}
    assert len(set(by_flag.values())) == 5
    seen = set()
    for seed in range(60):
        expect = flags[int(np.random.default_rng(seed).integers(5))]
        out, boxes = resize(image, annos(), np.random.default_rng(seed))
        assert out.tobytes() == by_flag[expect]
        seen.add(expect)
        np.testing.assert_allclose(boxes.boxes, [[2 * 24 / 53, 3 * 24 / 37, 20 * 24 / 53,
                                                  30 * 24 / 37]], rtol=1e-6)
    assert seen == set(flags)
    # One flag: deterministic and no draw from the generator.
    rng = np.random.default_rng(5)
    Resize(height=24, width=24)(image, annos(), rng)
    assert rng.random() == np.random.default_rng(5).random()
    with pytest.raises(ValueError, match="interp"):
        Resize(interp=(cv2.INTER_LINEAR, 99))
