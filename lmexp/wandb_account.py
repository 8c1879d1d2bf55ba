"""Whether this machine has a W&B account configured, which a W&B report needs. A leaf, so that the
report command asks without importing Lightning."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlsplit

# Where `wandb login` writes the key when WANDB_BASE_URL is unset: W&B's API host, or CoreWeave
# Forge's, which serves the same accounts and is the default of newer wandb releases (0.31).
DEFAULT_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


def has_wandb_account() -> bool:
    """An API key in WANDB_API_KEY, or one for the W&B host in the netrc file (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base_url).netloc or base_url] if base_url else DEFAULT_HOSTS
    try:
        logins = netrc.netrc(os.environ.get("NETRC") or None)  # None: ~/.netrc; wandb reads NETRC too
    except (OSError, netrc.NetrcParseError):
        return False
    return any(logins.authenticators(host) for host in hosts)
