def length(sample):
    """The response's length in characters over 200, at most 1: a reward that varies on an untrained model."""
    return min(1.0, len(sample.response) / 200)
