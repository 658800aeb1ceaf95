"""What a training run reports to its stage and stops on (the VAEs' loop and the classifier's)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""
