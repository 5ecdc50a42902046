"""The one exception tree of `pki`.

PkiError
├── RoleError            the role extension is missing or malformed
├── IdentityError        the subject has no single common name
├── IssueError           an issuance request is invalid (name, SAN, days)
│   └── ValidityError    the validity window does not fit the CA's
├── OverwriteError       an output file exists and force was not given
├── LoadError            a certificate or key file cannot be read or does not match
└── VerificationError    a certificate fails verification against the CA
"""

from __future__ import annotations


class PkiError(Exception):
    """Root of every error raised by `pki`."""


class RoleError(PkiError):
    """The role extension is absent, repeated, malformed or names an unknown role."""


class IdentityError(PkiError):
    """The certificate subject does not carry exactly one common name."""


class IssueError(PkiError):
    """An issuance request is invalid."""


class ValidityError(IssueError):
    """The requested validity window is empty or does not fit inside the CA's."""


class OverwriteError(PkiError):
    """An output file already exists and overwriting was not requested."""


class LoadError(PkiError):
    """A certificate or key file cannot be read, parsed or paired."""


class VerificationError(PkiError):
    """A certificate failed verification; `problems` lists every failed check."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
