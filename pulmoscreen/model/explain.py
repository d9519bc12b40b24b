"""Heatmaps: where the screening model looked for a finding (class activation maps).

The screening model's head is global average pooling over the last convolutional feature map
``A`` (``h x w x k``), then one dense layer and a softmax. The logit of class ``c`` is
``y_c = sum_k W[k, c] * mean_ij A[i, j, k] + b_c``, so its gradient with respect to ``A[i, j, k]``
is ``W[k, c] / (h * w)`` at every location, and Grad-CAM's channel weights (the spatial mean of
that gradient) are ``W[k, c] / (h * w)``: Grad-CAM on the class logit is the class activation map
``relu(sum_k W[k, c] * A[:, :, k])`` up to a positive factor, which the normalisation to [0, 1]
removes (Zhou et al. 2016; Selvaraju et al. 2017). It needs only the feature map and the dense
weights: no gradients, so it runs on any Keras backend and on OpenVINO, where the feature map is
a second output of the same forward pass. See docs/explain.md.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from pulmoscreen.model.card import ModelCard


def _producer(tensor: Any) -> Any:
    """The layer that produced a symbolic Keras tensor."""
    return tensor._keras_history[0]


def _pooling_layer(model: Any) -> tuple[Any, Any]:
    """(the global average pooling layer before ``probs``, the sub-model holding it or None).

    Raises:
        ValueError: the head is not global average pooling, then (dropout and) a dense layer:
            class activation maps would not equal Grad-CAM.
    """
    import keras

    layer = _producer(model.get_layer("probs").input)
    while isinstance(layer, keras.layers.Dropout):  # the identity at inference
        layer = _producer(layer.input)
    holder = None
    if isinstance(layer, keras.Model):
        holder, layer = layer, layer.layers[-1]
    if not isinstance(layer, keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"head is {type(layer).__name__}, not global average pooling + dense")
    if layer.data_format != "channels_last":
        raise ValueError("the feature map must be channels last")
    return layer, holder


def feature_map_model(model: Any) -> Any:
    """A Keras model with ``model``'s input and three outputs: the probabilities, the pooled
    features (the dense layer's input) and the last convolutional feature map ``(n, h, w, k)``.

    Raises:
        ValueError: the head is not global average pooling + dense (see :func:`_pooling_layer`).
    """
    import keras

    pooling, holder = _pooling_layer(model)
    dense = model.get_layer("probs")
    if holder is None:
        return keras.Model(model.inputs, [model.outputs[0], dense.input, pooling.input])
    if _producer(model.outputs[0]) is not dense:
        raise ValueError("the model's output is not its dense probs layer")
    # The backbone again up to its feature map, then its own pooling and the dense layer on
    # that map (dropout is the identity at inference): one pass, the same weights.
    inner = keras.Model(holder.inputs, pooling.input)
    feature_map = inner(holder._inbound_nodes[0].input_tensors[0])
    pooled = pooling(feature_map)
    return keras.Model(model.inputs, [dense(pooled), pooled, feature_map])


def dense_kernel(model: Any) -> NDArray[np.float32]:
    """The classifier's weights ``(k, n_labels)`` (its bias shifts every location alike and is
    left out, as in CAM and Grad-CAM)."""
    return np.asarray(model.get_layer("probs").get_weights()[0], dtype=np.float32)


def class_activation_maps(
    feature_maps_nhwk: NDArray[np.float32], kernel: NDArray[np.float32], class_index: int
) -> NDArray[np.float32]:
    """``sum_k W[k, c] * A[..., k]`` for every image: ``(n, h, w)``, before the ReLU."""
    weights = np.asarray(kernel, dtype=np.float32)[:, class_index]
    return np.asarray(np.tensordot(feature_maps_nhwk, weights, axes=([-1], [0])), np.float32)


def to_heatmap(cam_hw: NDArray[np.float32], *, size: int) -> NDArray[np.float32]:
    """A class activation map as a heatmap: ReLU, bilinear resize to ``size x size`` (the model
    input), scaled to [0, 1] by its maximum (all zeros when nothing speaks for the class)."""
    positive = np.maximum(np.asarray(cam_hw, dtype=np.float32), 0.0)
    large = cv2.resize(positive, (size, size), interpolation=cv2.INTER_LINEAR)
    peak = float(large.max(initial=0.0))
    if peak <= 0.0 or not np.isfinite(peak):
        return np.zeros((size, size), dtype=np.float32)
    return np.clip(large / peak, 0.0, 1.0).astype(np.float32)


def heatmaps_for(
    feature_maps_nhwk: NDArray[np.float32],
    kernel: NDArray[np.float32],
    class_indices: list[int],
    *,
    size: int,
) -> list[NDArray[np.float32]]:
    """One heatmap per image, each for its own class: floats in [0, 1], ``size x size``."""
    return [
        to_heatmap(class_activation_maps(fmap[None], kernel, c)[0], size=size)
        for fmap, c in zip(feature_maps_nhwk, class_indices, strict=True)
    ]


def label_to_explain(probs: NDArray[np.float32], card: ModelCard) -> str | None:
    """The flagged disease with the highest probability: one whose probability reaches its
    threshold in ``card`` (None when none does, or the model is untrained)."""
    if not card.trained:
        return None
    probabilities = dict(zip(card.labels, (float(p) for p in probs), strict=True))
    flagged = [
        (probabilities[d], d)
        for d, threshold in card.thresholds.items()
        if d in probabilities and probabilities[d] >= threshold
    ]
    return max(flagged)[1] if flagged else None


def heatmap_png(heatmap: NDArray[np.float32]) -> bytes:
    """A heatmap as an 8-bit grey PNG (0: nothing, 255: the hottest place)."""
    grey = np.round(np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", grey)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())


def read_heatmap_png(data: bytes) -> NDArray[np.float32]:
    """A heatmap written by :func:`heatmap_png`, back as floats in [0, 1]."""
    grey = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError("not a PNG heatmap")
    return (grey.astype(np.float32) / 255.0).astype(np.float32)


def _grey_u8(display_pixels: NDArray[Any]) -> NDArray[np.uint8]:
    """Any grey image stretched to 0..255 (a flat one is mid-grey)."""
    plane = np.asarray(display_pixels, dtype=np.float32)
    if plane.ndim == 3:
        plane = plane[..., 0]
    low, high = float(plane.min()), float(plane.max())
    if high <= low:
        return np.full(plane.shape, 128, dtype=np.uint8)
    return np.round((plane - low) * (255.0 / (high - low))).astype(np.uint8)


def _heat_at(heatmap: NDArray[np.float32], shape: tuple[int, int], crop: float) -> NDArray[Any]:
    """The heatmap laid over a ``shape`` image: resized bilinearly to it, or, for a model that
    saw only its centre (``PreprocessSpec.crop``), to that centre with zeros around it."""
    height, width = shape
    top, left = round(height * crop), round(width * crop)
    heat = np.zeros(shape, dtype=np.float32)
    inner = cv2.resize(
        np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0),
        (width - 2 * left, height - 2 * top),
        interpolation=cv2.INTER_LINEAR,
    )
    heat[top : height - top, left : width - left] = inner
    return heat


def overlay(
    display_pixels: NDArray[Any],
    heatmap: NDArray[np.float32],
    *,
    crop: float = 0.0,
    opacity: float = 0.5,
) -> NDArray[np.uint8]:
    """A heatmap in colour (jet: blue cold, red hot) over a grey radiograph: RGB uint8 at the
    radiograph's size. Cold places keep the radiograph as it is; the colour's weight grows
    with the heat, up to ``opacity``.

    Args:
        display_pixels: the radiograph, ``(h, w)`` or ``(h, w, c)`` of any numeric type (the
            first channel is used), bright bone: the model input, or the whole radiograph.
        heatmap: floats in [0, 1] of any size (resized bilinearly to the radiograph's).
        crop: the model card's ``PreprocessSpec.crop`` when ``display_pixels`` is the whole
            radiograph (the model saw its centre only); 0 for the model input itself.
        opacity: the colour's weight at the hottest place.
    """
    grey = _grey_u8(display_pixels)
    heat = _heat_at(heatmap, grey.shape, crop)
    colour_bgr = cv2.applyColorMap(np.round(heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (opacity * heat)[..., None]
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    return np.round(base * (1.0 - weight) + colour * weight).astype(np.uint8)


def predict_with_maps(
    runner: Any, batch_nhwc: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Probabilities ``(n, n_labels)``, penultimate features ``(n, k)`` and the last feature map
    ``(n, h, w, k)`` of a batch, from one forward pass of a runner
    (:mod:`pulmoscreen.model.backends`)."""
    if batch_nhwc.ndim != 4:
        raise ValueError(f"expected (n, h, w, c), got {batch_nhwc.shape}")
    probs, features, maps = runner.predict_with_maps(batch_nhwc)
    return (
        np.asarray(probs, dtype=np.float32),
        np.asarray(features, dtype=np.float32),
        np.asarray(maps, dtype=np.float32),
    )
