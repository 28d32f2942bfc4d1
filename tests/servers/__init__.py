"""Development servers for tests and local runs: real HTTP on 127.0.0.1, no part of the library."""
