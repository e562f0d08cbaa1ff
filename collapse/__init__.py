"""collapse: model-collapse experiments as content-addressed stage graphs."""
