"""The small CNN, its normalisation and augmentation."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dynamics.cnn import CIFAR10_MEAN, CIFAR10_STD, SmallCNN, augment, normalise
from tolerance import assert_close


def random_images(seed, n=8):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@given(width=st.sampled_from([0.25, 0.5, 1.0, 1.5]), num_classes=st.integers(2, 12), n=st.integers(1, 3))
def test_output_shapes(width, num_classes, n):
    model = SmallCNN(num_classes, width=width, generator=torch.Generator().manual_seed(0))
    x = normalise(random_images(1, n))
    assert model.feature_dim == round(128 * width)
    assert model.features(x).shape == (n, model.feature_dim)
    assert model(x).shape == (n, num_classes)


def test_logits_are_the_head_of_the_features():
    model = SmallCNN(generator=torch.Generator().manual_seed(0)).eval()
    x = normalise(random_images(2))
    assert_close(model(x).detach().numpy(), model.head(model.features(x)).detach().numpy())



@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("size", [32, 29])
def test_the_gradient_free_forward_equals_the_forward_with_gradient_bit_for_bit(seed, size):
    """The pooling's channels-last route (no gradient, CPU) against torch's own kernel: same features, exactly;
    and the route with gradient is torch's MaxPool2d itself, so training's gradients are untouched."""
    model = SmallCNN(10, width=0.5, generator=torch.Generator().manual_seed(seed)).eval()
    x = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(seed + 10))
    with_gradient = model.features(x)
    with torch.no_grad():
        without = model.features(x)
    with torch.inference_mode():
        inference = model.features(x)
    assert torch.equal(without, with_gradient.detach()) and torch.equal(inference, without)
    reference = torch.nn.Sequential(*[torch.nn.MaxPool2d(2) if isinstance(layer, torch.nn.MaxPool2d) else layer
                                      for layer in model.body])
    with torch.no_grad():
        assert torch.equal(reference(x), without)


@given(seed=st.integers(0, 2**63 - 1))
def test_weights_come_from_the_generator_only(seed):
    global_state = torch.random.get_rng_state()
    first = SmallCNN(generator=torch.Generator().manual_seed(seed)).state_dict()
    second = SmallCNN(generator=torch.Generator().manual_seed(seed)).state_dict()
    other = SmallCNN(generator=torch.Generator().manual_seed(seed ^ 1)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_initial_scale():
    # He-normal convolutions and a LeCun-normal head keep logits of order one at initialisation.
    model = SmallCNN(generator=torch.Generator().manual_seed(0)).train()
    logits = model(normalise(random_images(3, 64)))
    assert 0.2 < logits.std().item() < 5


def test_float64_parameters():
    model = SmallCNN(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert model(normalise(random_images(4), dtype=torch.float64)).dtype == torch.float64


def test_normalise_layout_and_values():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    images[1, 5, 7] = (255, 0, 51)
    assert normalise(images).dtype == torch.float32
    x = normalise(images, dtype=torch.float64)
    assert x.shape == (2, 3, 32, 32)
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    assert_close(x[1, :, 5, 7].numpy(), (np.array([1.0, 0.0, 0.2]) - mean) / std)
    assert_close(x[0, :, 0, 0].numpy(), -mean / std)
    assert_close(normalise(torch.from_numpy(images), dtype=torch.float64).numpy(), x.numpy())


def test_normalise_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        normalise(np.zeros((1, 32, 32, 3)))


def crops_of(image, padding):
    """Every crop of the zero-padded ``image (C, H, W)``, flipped or not: the oracle for ``augment``."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + height, dx : dx + width]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop.flip(-1)


@given(seed=st.integers(0, 2**63 - 1), padding=st.integers(0, 4), as_uint8=st.booleans())
def test_augment_returns_a_crop_of_the_padded_image(seed, padding, as_uint8):
    # Distinct positive pixels (216 fit in uint8), so that exactly one crop matches.
    images = torch.arange(1, 2 * 3 * 6 * 6 + 1).reshape(2, 3, 6, 6).to(torch.uint8 if as_uint8 else torch.float32)
    global_state = torch.random.get_rng_state()
    out = augment(images, torch.Generator().manual_seed(seed), padding=padding)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert out.shape == images.shape and out.dtype == images.dtype
    for image, result in zip(images, out):
        assert sum(torch.equal(crop, result) for _, crop in crops_of(image, padding)) == 1


def test_augment_flips_half_the_images():
    images = torch.arange(32.0).expand(256, 1, 32, 32).contiguous()  # pixel value = its column
    out = augment(images, torch.Generator().manual_seed(0), padding=0)
    flipped = (out == images[0].flip(-1)).flatten(1).all(1)
    kept = (out == images[0]).flatten(1).all(1)
    assert torch.all(flipped ^ kept)
    # Without padding only the flip is random, a fair coin: 256 draws stay within 5 sigma (8) of 128.
    assert abs(flipped.sum().item() - 128) < 40


def test_augment_repeats_with_the_same_seed():
    x = normalise(random_images(5))
    first = augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment(x, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("seed", range(3))
def test_a_few_sgd_steps_reduce_the_loss(seed):
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(width=0.5, generator=generator).train()
    x = normalise(random_images(seed, 16))
    y = torch.randint(0, 10, (16,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
