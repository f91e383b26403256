"""Network architectures as plain torch modules; they import nothing of the project but its error types."""
