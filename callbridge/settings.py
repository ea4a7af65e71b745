"""Service settings, read from the environment and `.env` (pydantic-settings).

Every field here is listed in `.env.example`; an invalid value stops start-up with a message that
names the variable (see `load_settings`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from callbridge.bots.base import E164
from callbridge.redact import redact_url
from callbridge.transports.telnyx import public_key as telnyx_public_key


class SettingsError(Exception):
    """Raised when the environment holds an invalid setting; the message names each bad variable."""


class IceServer(BaseModel):
    """One STUN or TURN server for WebRTC, as a browser's RTCIceServer spells it."""

    urls: str | list[str]
    username: str | None = None
    credential: str | None = None

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- server -------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_url: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    bot: str = "assistant"
    bot_path: str = ""
    concurrency_limit: int = Field(100, ge=1)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    max_message_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    # Caller audio waiting for the VAD, per call, at most; beyond it a media socket closes (Call.push_audio says why).
    inbound_backlog_seconds: float = Field(10.0, ge=1, le=300)
    outbound_lead_ms: int = Field(60, ge=0, le=2000)
    # The media sockets' timeouts (Twilio's stream, the browser's µ-law socket). A real Twilio stream sends its
    # `start` within about a second; real networks stall for a few seconds (a Wi-Fi or mobile handover). 10 s
    # rides out such a stall, yet a socket that never starts, a frozen client (its kernel still acknowledges,
    # nothing answers) or one that never reads gives back its slot and its file descriptor within seconds.
    media_start_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # The edge pings every this many seconds; a socket whose pong has not come by the next one is dropped.
    media_ping_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # A socket whose outbound data stays backed up (its write buffer full) this long is dropped.
    media_send_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Origins whose pages may use the browser routes besides the service's own ("*": any); see origin_refusal.
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    workers: int = Field(1, ge=1, le=64)
    # The event loop blocked this long (a blocking call in a bot) is logged, naming the call and the code.
    loop_lag_warning_ms: int = Field(250, ge=0, le=60000)
    redis_url: str = ""
    # The bearer token of the outbound-call API (POST /calls); unset, that route is off (404).
    api_token: str = Field("", repr=False)

    # --- Twilio -------------------------------------------------------------------------------------
    twilio_auth_token: str = Field("", repr=False)
    twilio_account_sid: str = ""
    # Outbound calls and transfers use Twilio's REST API with TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.
    twilio_from_number: str = ""
    twilio_api_url: str = "https://api.twilio.com"
    twilio_api_timeout_seconds: float = Field(10.0, gt=0, le=60)
    call_token_secret: str = Field("", repr=False)
    # A per-call token opens its stream within this long of the webhook (Twilio connects within a second or two).
    call_token_seconds: float = Field(30.0, gt=0, le=600)

    # --- Twilio ConversationRelay (POST /relay/incoming: Twilio does the speech, the assistant's brain answers) ---
    # The TwiML's language (BCP-47) and Twilio's TTS voice for it ("": Twilio's default voice for the language).
    relay_language: str = Field("en-US", pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    relay_voice: str = Field("", max_length=100)
    # --- Vonage -------------------------------------------------------------------------------------
    # The account's signature secret: when set, answer webhooks must carry Vonage's signed JWT (HS256).
    vonage_signature_secret: str = Field("", repr=False)

    # --- Telnyx -------------------------------------------------------------------------------------
    # The account's Ed25519 public key (base64): when set, every TeXML webhook must carry a valid signature.
    telnyx_public_key: str = ""

    # --- Plivo --------------------------------------------------------------------------------------
    # POST /plivo/incoming checks X-Plivo-Signature-V3 with PLIVO_AUTH_TOKEN (unset: unchecked); with
    # PLIVO_AUTH_ID, a stream whose start names another account is refused.
    plivo_auth_id: str = ""
    plivo_auth_token: str = Field("", repr=False)

    # --- turn-taking --------------------------------------------------------------------------------
    vad_backend: Literal["onnx", "torch"] = "onnx"
    # Where batched inference runs: "thread" (beside the event loop, on another core), "loop" (on the event
    # loop itself: no hand-off), or "auto": a thread with one worker, the loop with several (their event
    # loops already fill the cores; bench/results/history.md).
    vad_thread: Literal["auto", "thread", "loop"] = "auto"
    vad_enter_threshold: float = Field(0.5, gt=0, lt=1)
    vad_exit_threshold: float = Field(0.35, gt=0, lt=1)
    speech_start_ms: int = Field(192, ge=32, le=2000)
    pause_ms: int = Field(512, ge=96, le=5000)
    preroll_ms: int = Field(200, ge=0, le=2000)
    max_turn_seconds: float = Field(30.0, gt=0.5, le=600)
    # "model": at END_OF_TURN_ASK_MS of silence Smart Turn judges the turn, and ends it at once if the probability
    # reaches END_OF_TURN_THRESHOLD; PAUSE_MS still ends it otherwise (bench/results/end_of_turn.md: faster on
    # finished sentences, more splits at commas, ~18 ms CPU per call-second). Either way, at END_OF_TURN_ASK_MS
    # the bot may start on the turn (Bot.on_pause: the assistant starts transcribing). 150 rather than the model's
    # best 200: the assistant's first audio comes ~0.1 s sooner (bench/results/assistant.md), the model ends more
    # finished sentences early and splits more (bench/results/end_of_turn.md).
    end_of_turn: Literal["silence", "model"] = "silence"
    end_of_turn_ask_ms: int = Field(150, ge=64, le=2000)
    end_of_turn_threshold: float = Field(0.5, gt=0, lt=1)
    # With END_OF_TURN=model: 0 asks the model once per pause; else it is asked again every this many ms of the
    # same pause until PAUSE_MS (it hears the silence grow: bench/results/end_of_turn.md, "Asking again").
    end_of_turn_ask_every_ms: int = Field(0, ge=0, le=2000)
    barge_in: bool = True
    # A barge-in holds the reply: a backchannel or a noise lets it resume where the caller stopped hearing it
    # (false: it is cancelled at once).
    backchannel_resume: bool = True
    # Speech over a held reply longer than this is a real interruption: it cancels the reply at once. The
    # corpus (bench/results/backchannel.md): backchannels 0.35-0.64 s of speech to the VAD, interruptions 0.93 s on.
    backchannel_max_ms: int = Field(800, ge=100, le=5000)
    input_timeout_seconds: float = Field(0.5, ge=0, le=30)
    # Seconds of caller silence (nobody speaking, nothing playing) before the bot re-prompts; 0: never.
    idle_seconds: float = Field(10.0, ge=0, le=3600)
    # Re-prompts an idle caller gets before the bot's idle goodbye ends the call.
    idle_prompts: int = Field(2, ge=0, le=10)
    # Turns go to the bot only when they hold one of these words (comma-separated; empty: every turn does).
    stop_words: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # A stop-word check (the local Whisper) taking longer than this, once started, ignores the turn with a warning.
    stop_words_timeout_seconds: float = Field(5.0, gt=0, le=60)

    # --- WebRTC -------------------------------------------------------------------------------------
    # No STUN server by default: the service never contacts a public server unless configured to.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # A browser on the same host or LAN connects in well under a second, through TURN in one to three: 10 s
    # leaves room for a few seconds' stall, while an offer that never connects holds its slot (phone callers
    # meanwhile hear "busy") a third as long as the 30 s of ICE consent expiry.
    webrtc_connect_timeout_seconds: float = Field(10.0, gt=0, le=600)
    webrtc_max_call_seconds: float = Field(0.0, ge=0)
    # Video calls: at most this many camera frames a second go to the bot, and its pictures go out at this rate.
    # 15 halves a handler's CPU against a camera's 30 and is still smooth for a face; 1 to 60.
    video_fps: float = Field(15.0, ge=1, le=60)
    limit_status_code: int = 429

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for local tests)")
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("stop_words", mode="before")
    @classmethod
    def _split_stop_words(cls, value: object) -> object:
        return value.split(",") if isinstance(value, str) else value

    @field_validator("stop_words")
    @classmethod
    def _check_stop_words(cls, value: list[str]) -> list[str]:
        words = [word.strip() for word in value if word.strip()]
        for word in words:
            if not re.search(r"[A-Za-z0-9]", word):
                raise ValueError(f"{word!r} has no letter or digit: a stop word is matched on its words")
        return words

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = [origin.strip().rstrip("/").lower() for origin in value]
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin such as https://app.example.com (or *)")
        return origins

    @field_validator("limit_status_code")
    @classmethod
    def _check_limit_status_code(cls, value: int) -> int:
        if value not in (429, 200):
            raise ValueError("must be 429, or 200 for clients that cannot read error bodies")
        return value

    @field_validator("twilio_from_number")
    @classmethod
    def _check_from_number(cls, value: str) -> str:
        value = value.strip()
        if value and not E164.fullmatch(value):
            raise ValueError("must be an E.164 number such as +15550100")
        return value

    @field_validator("telnyx_public_key")
    @classmethod
    def _check_telnyx_public_key(cls, value: str) -> str:
        if value:
            try:
                telnyx_public_key(value)
            except ValueError as exc:
                raise ValueError(f"must be the account's base64 Ed25519 public key: {exc}") from None
        return value

    @field_validator("twilio_api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local test server)")
        return value

    @property
    def twilio_rest_configured(self) -> bool:
        """Whether Twilio's REST API can be used: outbound calls and transfers need both credentials."""
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        _ = urlsplit(value).port  # a port that is no number raises ValueError (its message shows no password)
        return value

    @model_validator(mode="after")
    def _check_hysteresis(self) -> Settings:
        if self.vad_exit_threshold > self.vad_enter_threshold:
            raise ValueError("VAD_EXIT_THRESHOLD must not exceed VAD_ENTER_THRESHOLD")
        return self

    @model_validator(mode="after")
    def _check_end_of_turn(self) -> Settings:
        if self.end_of_turn == "model" and self.end_of_turn_ask_ms >= self.pause_ms:
            raise ValueError("END_OF_TURN_ASK_MS must be below PAUSE_MS: the pause would end the turn before the "
                             "model is asked")
        if 0 < self.end_of_turn_ask_every_ms < 64:
            raise ValueError(f"END_OF_TURN_ASK_EVERY_MS={self.end_of_turn_ask_every_ms} must be 0 (ask once per "
                             "pause) or at least 64: the model takes ~50 ms of CPU per question")
        return self

    def public_base(self, scheme: str, host: str) -> str:
        """The public base URL Twilio reaches: PUBLIC_URL when set, else what this request was addressed to."""
        return self.public_url or f"{scheme}://{host}"

    def origin_refusal(self, origin: str | None, host: str) -> str | None:
        """Why a page from `origin` may not use the browser routes (None: it may). Allowed: no Origin at all (not
        a browser), the service's own origin (the Origin's host is the request's Host, or PUBLIC_URL's origin) and
        ALLOWED_ORIGINS. Without this check any web site a visitor opens could start calls in their name."""
        if not origin or "*" in self.allowed_origins:
            return None
        origin = origin.strip().rstrip("/").lower()
        own = {f"http://{host.lower()}", f"https://{host.lower()}"}
        if self.public_url:
            public = urlsplit(self.public_url.lower())
            own.add(f"{public.scheme}://{public.netloc}")
        if origin in own or origin in self.allowed_origins:
            return None
        return f"pages from {origin} may not use this service (ALLOWED_ORIGINS)"

    @property
    def vad_in_thread(self) -> bool:
        """Whether VAD inference runs in a thread beside the event loop (VAD_THREAD, resolved)."""
        return self.vad_thread == "thread" or (self.vad_thread == "auto" and self.workers == 1)

    @model_validator(mode="after")
    def _check_workers(self) -> Settings:
        if self.workers > 1 and not self.redis_url:
            raise ValueError("WORKERS above 1 needs REDIS_URL: the workers share ids, the limit and inputs there")
        return self


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's validation error into one readable line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except PydanticSettingsError as exc:  # a structured variable (ICE_SERVERS) that is not JSON
        field = str(exc).partition('field "')[2].partition('"')[0] or "settings"
        raise SettingsError(f"invalid settings:\n  {field.upper()}: must be JSON ({exc.__cause__ or exc})") from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            variable, *within = [str(part) for part in error["loc"]] or ["settings"]
            name = variable.upper() + (f" (entry {'.'.join(within)})" if within else "")
            value = error.get("input")
            if isinstance(value, str):
                value = redact_url(value)  # a mistyped URL's password stays out of the message
            shown = f" (got {value!r})" if not isinstance(value, dict) else ""
            lines.append(f"{name}: {error['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
