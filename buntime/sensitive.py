"""
Which environment variables may carry a secret (SPEC §2), on their own so
that a spawned worker, which hides them (L{buntime._libc.hide_environment_values}),
imports no more than this.
"""

from __future__ import annotations

import re

SENSITIVE_PATTERNS = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^(DATABASE|DB)_",
        r"(^|_)(API|AUTH|SECRET|PRIVATE|ACCESS)_?KEY",
        r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?)($|_)",
        r"^AWS_",
        r"^GITHUB_",
        r"^OPENAI_",
        r"^ANTHROPIC_",
        r"^STRIPE_",
    )
)
"""
Names a worker never gets from a manifest's C{env} (SPEC §2) unless its
C{envAllow} names them: a secret's usual words (C{MY_API_KEY},
C{STRIPE_SECRET}, C{DB_PASS}, C{GH_TOKEN}, C{SERVICE_CREDENTIALS}).
"""


def is_sensitive(name: str, allowed: frozenset[str] = frozenset()) -> bool:
    """
    Whether the variable C{name} may carry a secret (matched without case),
    and is not one of the C{allowed} names (upper case) the operator means to pass.
    """
    return name.upper() not in allowed and any(p.search(name) for p in SENSITIVE_PATTERNS)
