import numpy as np

from training.adversary import gradient_reversal_class, plain_logs


class TestGradientReversal:
    def test_values_pass_gradients_flip(self):
        import tensorflow as tf

        layer = gradient_reversal_class()()
        x = tf.Variable([[1.0, -2.0, 3.0]])
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0, 3.0]]))
        np.testing.assert_allclose(y.numpy(), x.numpy())
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [[-1.0, -2.0, -3.0]])


class TestPlainLogs:
    def test_two_output_logs_read_as_the_screening_outputs(self):
        logs = {
            "loss": 1.5,
            "probs_loss": 1.0,
            "source_loss": 0.5,
            "probs_accuracy": 0.8,
            "val_loss": 1.2,
            "val_probs_loss": 0.9,
            "val_probs_accuracy": 0.7,
        }
        plain_logs(logs)
        assert logs["loss"] == 1.0
        assert logs["total_loss"] == 1.5
        assert logs["accuracy"] == 0.8
        assert logs["val_loss"] == 0.9
        assert logs["val_accuracy"] == 0.7
        assert logs["source_loss"] == 0.5
