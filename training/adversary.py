"""Domain-adversarial training: a source head behind a gradient-reversal layer.

The head tries to tell which collection an image came from, given the image's true label, from
the screening model's penultimate features. Its gradient reaches the features reversed, so the
backbone learns features that do *not* tell the source apart within a label: what a model
needs to hold at a hospital it never saw (Ganin et al., 2016; conditioned on the label, so the
disease itself, which differs between sources, is not what gets removed).
"""

from __future__ import annotations

from typing import Any

TRUNK_NAME = "screening_trunk"
SOURCE_OUTPUT = "source"


def gradient_reversal_class() -> Any:
    """The layer class that passes values through and multiplies gradients by -1 (any
    backend), registered so that a saved training model loads again (``--resume``)."""
    import keras

    @keras.saving.register_keras_serializable(package="pulmoscreen")
    class GradientReversal(keras.layers.Layer):  # type: ignore[misc, name-defined]
        def call(self, x: Any) -> Any:
            # forward: 2x - x = x; backward: the stopped term contributes nothing, so -1
            return keras.ops.stop_gradient(2.0 * x) - x

    return GradientReversal


def adversarial_model(
    serving: Any, augment: list[Any], *, size: int, n_labels: int, n_sources: int
) -> Any:
    """The training model: {image, label} -> {probs, source}; ``serving``'s layers shared."""
    import keras

    trunk = keras.Model(
        serving.inputs, [serving.output, serving.get_layer("probs").input], name=TRUNK_NAME
    )
    image = keras.Input((size, size, 3), name="image")
    label = keras.Input((n_labels,), name="label")
    x = image
    for layer in augment:
        x = layer(x)
    probs, features = trunk(x)
    h = keras.layers.Concatenate(name="features_and_label")(
        [gradient_reversal_class()(name="reverse_gradient")(features), label]
    )
    h = keras.layers.Dense(128, activation="relu", name="source_hidden")(h)
    source = keras.layers.Dense(
        n_sources, activation="softmax", name="source_probs", dtype="float32"
    )(h)
    outputs = {"probs": probs, SOURCE_OUTPUT: source}
    return keras.Model({"image": image, "label": label}, outputs, name="training")


def serving_of(model: Any, name: str) -> Any:
    """The serving model inside a (re)loaded adversarial training model."""
    import keras

    trunk = model.get_layer(TRUNK_NAME)
    return keras.Model(trunk.inputs, trunk.outputs[0], name=name)


def plain_logs(logs: dict[str, Any]) -> None:
    """Rename a two-output model's logs in place so ``loss``/``accuracy`` (and ``val_``) mean
    the screening output's, as for a plain model; the total and the adversary's stay beside."""
    for prefix in ("", "val_"):
        if f"{prefix}probs_loss" in logs:
            logs[f"{prefix}total_loss"] = logs[f"{prefix}loss"]
            logs[f"{prefix}loss"] = logs.pop(f"{prefix}probs_loss")
        if f"{prefix}probs_accuracy" in logs:
            logs[f"{prefix}accuracy"] = logs.pop(f"{prefix}probs_accuracy")
