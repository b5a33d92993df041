"""What the tests and the benchmark share: one module per real server, clients and images."""
