"""The configuration file's shape: one TOML document decoded into these Structs.

The names here are a public contract (see docs/CONFIGURATION.md); add, never rename.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.algorithms import AsymmetricAlgorithm, SigningAlgorithm
from schemas.base import Base, Identifier, Leeway, NonEmptyStr, TokenTTL
from schemas.rules import ClaimPath, Delegation, DetailField, FieldName, RuleConfig

# Subject tokens come from asymmetric issuers only: never "none", never HS*.
SubjectAlgorithm = AsymmetricAlgorithm
AuthMethod = Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
PoolSize = Annotated[int, msgspec.Meta(ge=1, le=100)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=60)]


class StoreConfig(Base, frozen=True):
    url: NonEmptyStr = "sqlite:///exchange.db"
    pool_min_size: PoolSize = 1
    pool_max_size: PoolSize = 10
    connect_timeout: Timeout = 5.0
    command_timeout: Timeout = 5.0
    migrate_on_start: bool = True


# "<n>d" or "<n>h": how often a new signing key is staged (docs/CONFIGURATION.md, "Signing").
RotationPeriod = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,4}[dh]$")]


class SigningConfig(Base, frozen=True):
    # Changing it rotates to a key of the new algorithm through the usual lifecycle.
    algorithm: SigningAlgorithm = "ES256"
    kek_file: str | None = None
    # The KEK being replaced, during `exchange keys rewrap` (only opens keys; never seals).
    previous_kek_file: str | None = None
    # How long clients may cache the JWKS (Cache-Control max-age on /.well-known/jwks.json). A staged
    # key signs no sooner than this (at least 60 s, what our verifiers cache at least) plus the margin
    # after it was published, and a key that stopped signing stays published for the longest token
    # lifetime plus leeway plus this.
    jwks_max_age: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 300
    # Seconds added to the wait before a staged key signs: room for every replica to publish it.
    activation_margin: Annotated[int, msgspec.Meta(ge=10, le=86400)] = 60
    # Scheduled rotation: stage a new key this long after the current one began signing; unset: only
    # `exchange keys rotate` (or an algorithm change) stages one.
    rotate_every: RotationPeriod | None = None

    @property
    def rotate_every_seconds(self) -> float | None:
        if self.rotate_every is None:
            return None
        return int(self.rotate_every[:-1]) * (86400.0 if self.rotate_every.endswith("d") else 3600.0)


class TrustedIssuer(Base, frozen=True):
    issuer: NonEmptyStr
    audiences: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    jwks_file: str | None = None
    jwks_uri: str | None = None
    algorithms: Annotated[list[SubjectAlgorithm], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    leeway: Leeway = 30
    # jwks_uri only: an unknown kid refetches the JWKS at most once per this many seconds, so a
    # stream of made-up kids cannot turn the exchange into a request amplifier against the issuer.
    jwks_cooldown: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    # RFC 9068: an access token declares itself with typ "at+jwt". Some providers omit it; set false
    # only for such an issuer, and its access tokens are then told from ID tokens by declaration alone.
    require_at_jwt_typ: bool = True


class Client(Base, frozen=True):
    client_id: Identifier
    auth_method: AuthMethod = "none"
    secret_hash: str | None = None
    # Name of an environment variable holding the secret hash, so config files can be committed.
    secret_hash_env: str | None = None
    jwks_file: str | None = None
    jwks_uri: str | None = None
    purposes: list[NonEmptyStr] = msgspec.field(default_factory=list)
    # Further parties whose identity tokens this client may exchange (or present as actor tokens),
    # beside the client itself: a token's party is its azp, else its client_id, else its one audience
    # beside the exchange's; a token whose only audience is the exchange's is issued to that audience
    # name. See docs/CONFIGURATION.md ("Whose tokens a client may present").
    tokens_issued_to: list[Identifier] = msgspec.field(default_factory=list)


#: What a workload may present as the subject of a Txn-Token request (draft-ietf-oauth-transaction-
#: tokens-10 §11.2): the RFC 8693 types of a trusted issuer's tokens, a self-signed JWT (§11.2.1), an
#: unsigned JSON object (§11.2.2), or a Txn-Token to replace (§13.15). Named by the URN's last part.
TxnSubjectKind = Literal["access_token", "id_token", "jwt", "self_signed", "unsigned_json", "txn_token"]


class TxnPurpose(Base, frozen=True):
    """How a purpose issues Txn-Tokens (draft §11.3): what enters `tctx` and `rctx`, how the subject's
    own scope is read (§13.6, §13.14), and which Txn-Tokens it may replace (§13.15)."""

    # request_details is validated as this authorization_details type of the purpose and becomes tctx;
    # None: the purpose takes no request_details.
    request_details: NonEmptyStr | None = None
    # The request_context members asserted in rctx, each with its field spec; others are not asserted.
    request_context: dict[FieldName, DetailField] = msgspec.field(default_factory=dict)
    # The scope values the subject token must carry for this purpose (draft §13.6); default: its name.
    subject_scopes: list[NonEmptyStr] | None = None
    # Where the subject's scope is read: a space-delimited string (RFC 8693 §4.2) or a list of strings.
    scope_claim: ClaimPath = "scope"
    # A subject whose scope cannot be determined: "refuse" (draft §13.14), or "purpose": this purpose's
    # own rules are the trusted source of what it may do (for ID tokens, self-signed subjects...).
    unscoped_subjects: Literal["refuse", "purpose"] = "refuse"
    # Purposes whose Txn-Tokens a Txn-Token of this purpose may replace (it must be narrower); a
    # purpose may always replace its own.
    replaces: list[NonEmptyStr] = msgspec.field(default_factory=list)
    # Seconds; default [txn_tokens] ttl.
    ttl: TokenTTL | None = None


class Purpose(Base, frozen=True):
    # Where its purpose tokens may go; none: the purpose issues Txn-Tokens only.
    audience: NonEmptyStr | list[NonEmptyStr] = msgspec.field(default_factory=list)
    ttl: TokenTTL = 60
    rules: list[RuleConfig] = msgspec.field(default_factory=list)
    single_use: bool = False
    authorization_details: dict[str, dict[str, DetailField]] = msgspec.field(default_factory=dict)
    delegation: Delegation = msgspec.field(default_factory=Delegation)
    # Set: the purpose also issues Txn-Tokens (requested_token_type ...:txn_token).
    txn_token: TxnPurpose | None = None

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class TxnWorkload(Base, frozen=True):
    """A configured client that may request Txn-Tokens (draft §13.10), and what it may present."""

    client_id: Identifier
    subject_token_types: Annotated[list[TxnSubjectKind], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["access_token"]
    )
    # self_signed / unsigned_json: the namespace of the subjects the workload names. Default: its own
    # (its subjects are its own, e.g. a scheduled job's); a trusted issuer's URL lets it speak for that
    # issuer's users (impersonation, draft §8.2), which only a workload trusted that far should get.
    subject_namespace: NonEmptyStr | None = None


class TxnTokens(Base, frozen=True):
    """The Transaction Token Service (draft §10): one trust domain, short lives, bounded replacement."""

    # The Txn-Token `aud` and the `audience` a request must name (draft §9.2, §11.1).
    trust_domain: NonEmptyStr
    # Seconds; "minutes at most" (draft §6): never more than the longest token lifetime.
    ttl: TokenTTL = 300
    # How many times one transaction's Txn-Token may be replaced (draft §13.15).
    max_replacements: Annotated[int, msgspec.Meta(ge=0, le=16)] = 4
    workloads: list[TxnWorkload] = msgspec.field(default_factory=list)


class DevIssuer(Base, frozen=True):
    """A local identity provider for the README walkthrough: never enable it in production."""

    issuer: NonEmptyStr = "http://127.0.0.1:8080/dev-idp"
    key_file: str = "dev-idp-key.json"
    audience: NonEmptyStr = "purpose-exchange"


class Limits(Base, frozen=True):
    # Largest subject/actor token accepted; anything longer is refused before any parsing.
    max_token_bytes: Annotated[int, msgspec.Meta(ge=512, le=65536)] = 8192
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1048576)] = 65536
    # Longest client assertion (RFC 7523) accepted, exp minus iat: stock clients sign for an hour.
    # Its jti is remembered until it expires, so a longer cap costs replay-table rows, not safety.
    max_assertion_lifetime: Annotated[int, msgspec.Meta(ge=60, le=86400)] = 3600
    # Slow clients (docs/CONFIGURATION.md, "Limits"): seconds a connection has to send its request
    # head (also how long an idle keep-alive connection stays open), and a /token body after its head.
    header_timeout: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0
    body_timeout: Annotated[float, msgspec.Meta(ge=1, le=300)] = 10.0
    # Open connections per worker; more wait in the listen backlog (the kernel's queue) until one closes.
    max_connections: Annotated[int, msgspec.Meta(ge=16, le=65536)] = 4096
    backlog: Annotated[int, msgspec.Meta(ge=128, le=65535)] = 1024
    # A connection's read buffer, so the largest request head: bounds memory per slow connection.
    max_header_bytes: Annotated[int, msgspec.Meta(ge=8192, le=1048576)] = 16384


class LoggingConfig(Base, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: JSON lines, unless stderr is a terminal (then structlog's console renderer).
    format: Literal["auto", "json", "console"] = "auto"
    # granian's own access log, as `http_access` lines. Off by default: every request already has its
    # one canonical line (token_issued / exchange_denied for /token, http_request for the rest).
    access_log: bool = False


class MetricsConfig(Base, frozen=True):
    enabled: bool = True
    # "host:port" of a separate management listener for /metrics, run by `exchange serve` beside the
    # service; unset: /metrics is served on the service's own port.
    listen: str | None = None


class TracingConfig(Base, frozen=True):
    """OpenTelemetry tracing; needs the `otel` extra (`pip install 'purpose-exchange[otel]'`)."""

    enabled: bool = False
    service_name: NonEmptyStr = "purpose-exchange"
    # OTLP over HTTP; unset: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces.
    endpoint: str | None = None
    # Share of traces started here (no sampled parent in `traceparent`) that are recorded.
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0


class AuditConfig(Base, frozen=True):
    """The audit trail's growth (docs/CONFIGURATION.md, "Audit")."""

    # How long records (and counts of unauthenticated denials) are kept: "<days>d", or "forever".
    retention: Annotated[str, msgspec.Meta(pattern=r"^([1-9][0-9]{0,4}d|forever)$")] = "90d"
    # Denials before client authentication are counted per window of this many seconds, per
    # (reason, error, client_id as given, source address), not recorded one by one.
    tally_window: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60
    # Distinct such keys a worker counts per window; beyond them, counts are folded (never dropped).
    tally_keys: Annotated[int, msgspec.Meta(ge=10, le=100000)] = 1000

    @property
    def retention_seconds(self) -> float | None:
        """Seconds records are kept; None for "forever"."""
        return None if self.retention == "forever" else int(self.retention[:-1]) * 86400.0


class Settings(Base, frozen=True):
    issuer: NonEmptyStr
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    signing: SigningConfig = msgspec.field(default_factory=SigningConfig)
    limits: Limits = msgspec.field(default_factory=Limits)
    trusted_issuers: list[TrustedIssuer] = msgspec.field(default_factory=list)
    clients: list[Client] = msgspec.field(default_factory=list)
    purposes: dict[NonEmptyStr, Purpose] = msgspec.field(default_factory=dict)
    dev_issuer: DevIssuer | None = None
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)
    txn_tokens: TxnTokens | None = None
