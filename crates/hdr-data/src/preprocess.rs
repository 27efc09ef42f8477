//! Turning real images of digits into MNIST-style inputs.
