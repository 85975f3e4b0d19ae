"""Small example clients: Triton over gRPC and HTTP (tritonclient only), and the BentoML gateway."""
