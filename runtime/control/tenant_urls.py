"""A tenant's URLs are checked against the egress policy before they are stored (the services of
webhooks, agents and credentials call this; the API and the CLI both go through them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from runtime.control.errors import Invalid
from runtime.egress.policy import WEB, WEB_AND_SOCKETS, EgressPolicy, UrlRefused
from runtime.providers.registry import MODALITIES

if TYPE_CHECKING:
    from runtime.control.schemas import AgentConfig
    from runtime.providers.registry import CredentialSpec

# A URL of a tenant's data: (its field path, the URL or None, the schemes it may have).
TenantUrl = tuple[str, str | None, tuple[str, ...]]


def check_urls(policy: EgressPolicy, urls: Iterable[TenantUrl]) -> None:
    """Invalid (422) naming every field whose URL ``policy`` refuses."""
    errors = []
    for path, url, schemes in urls:
        if url is None:
            continue
        try:
            policy.check_url(url, schemes)
        except UrlRefused as exc:
            errors.append({"field": path, "message": str(exc)})
    if errors:
        raise Invalid("; ".join(f"{e['field']}: {e['message']}" for e in errors), {"errors": errors})


def check_url(policy: EgressPolicy, path: str, url: str | None, schemes: tuple[str, ...] = WEB) -> None:
    check_urls(policy, [(path, url, schemes)])


def version_urls(config: AgentConfig) -> list[TenantUrl]:
    """The URLs an agent version holds: each modality's ``base_url`` and the HTTP tools'."""
    urls: list[TenantUrl] = [
        (f"{modality}.base_url", getattr(config, modality).base_url, WEB_AND_SOCKETS) for modality in MODALITIES]
    urls.extend((f"http_tools.{i}.url", tool.url, WEB) for i, tool in enumerate(config.http_tools))
    return urls


def credential_urls(spec: CredentialSpec, fields: Mapping[str, str]) -> list[TenantUrl]:
    """The URL fields of a credential; a bare host (an s3 ``endpoint`` may be one) is checked as https."""
    urls: list[TenantUrl] = []
    for name in spec.urls:
        value = (fields.get(name) or "").strip()
        if value:
            urls.append((f"fields.{name}", value if "://" in value else "https://" + value, spec.url_schemes))
    return urls
