"""jobworker PKI: issue CA/server/client certificates, encode and parse the role, verify."""

from pki._errors import (
    IdentityError,
    IssueError,
    LoadError,
    OverwriteError,
    PkiError,
    RoleError,
    ValidityError,
    VerificationError,
)
from pki._files import (
    CA_NAME,
    issued_paths,
    load_ca,
    load_certificate,
    load_issued,
    load_private_key,
    write_issued,
)
from pki._inspect import CertificateInfo, describe, identity_of
from pki._issue import (
    CLIENT_URI_PREFIX,
    CLOCK_SKEW,
    DEFAULT_SERVER_SANS,
    Issued,
    issue_ca,
    issue_client,
    issue_server,
)
from pki._keys import KeyType, PrivateKey, generate_key
from pki._policy import Purpose, issuer_problem, policy_problems, profile_problems, window_problem
from pki._revoke import CRL_NAME, crl_path, is_revoked, load_crl, revoke, write_crl
from pki._role import ROLE_OID, Role, encode_role, parse_role, parse_role_der
from pki._verify import verify_certificate

__all__ = [
    "CA_NAME",
    "CLIENT_URI_PREFIX",
    "CLOCK_SKEW",
    "CRL_NAME",
    "DEFAULT_SERVER_SANS",
    "ROLE_OID",
    "CertificateInfo",
    "IdentityError",
    "IssueError",
    "Issued",
    "KeyType",
    "LoadError",
    "OverwriteError",
    "PkiError",
    "PrivateKey",
    "Purpose",
    "Role",
    "RoleError",
    "ValidityError",
    "VerificationError",
    "crl_path",
    "describe",
    "encode_role",
    "generate_key",
    "identity_of",
    "is_revoked",
    "issue_ca",
    "issue_client",
    "issue_server",
    "issued_paths",
    "issuer_problem",
    "load_ca",
    "load_certificate",
    "load_crl",
    "load_issued",
    "load_private_key",
    "parse_role",
    "parse_role_der",
    "policy_problems",
    "profile_problems",
    "revoke",
    "verify_certificate",
    "window_problem",
    "write_crl",
    "write_issued",
]
