"""Unit-test root: puts this directory on sys.path so every suite can import `cert_forge`."""
