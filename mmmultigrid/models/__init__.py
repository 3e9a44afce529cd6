"""Models at every grid shape: grouped and precise batch norm, embeddings resized per shape, 2D
recognizers' segments, compilation, and the checks a model must pass (feature maps, batch mixing,
shape failures)."""
