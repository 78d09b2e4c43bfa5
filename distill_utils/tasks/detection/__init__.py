"""Object detection on scenes of Fashion-MNIST items (notebook 12)."""
