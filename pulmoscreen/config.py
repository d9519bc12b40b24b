"""Settings: the only module that reads the environment (prefix ``PULMO_``)."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL_NAME = "pulmoscreen_resnet50.npz"


def _shipped_model_path() -> Path:
    """The trained model that ships with the package, its card beside it.

    models/ of the source tree installs as ``pulmoscreen.shipped_model`` (setup.py), so a wheel
    and the editable install find it the same way; a source tree that was never installed falls
    back to models/ itself.
    """
    try:
        folder = Path(str(resources.files("pulmoscreen.shipped_model")))
    except ModuleNotFoundError:
        folder = REPO_ROOT / "models"
    return folder / SHIPPED_MODEL_NAME


DEFAULT_MODEL_PATH = _shipped_model_path()
# A server on another host is reachable by more than this machine's users: its password must be
# at least this long (`openssl rand -hex 24` prints 48 characters).
MIN_REMOTE_PASSWORD = 16
# Passwords that ship in examples or are tried first; compared lowercase with only [a-z0-9] kept.
PLACEHOLDER_PASSWORDS = frozenset(
    {"password", "secret", "postgres", "redis", "pulmo", "pulmoscreen", "admin", "example"}
)
ENV_PREFIX = "PULMO_"
# The test suites' own variables (scripts/ensure-*.sh, tests/integration, tests/faults): no
# setting, and no mistake either.
TEST_PREFIXES = ("PULMO_TEST_", "PULMO_FAULT_")
# docker compose's own variables, once PULMO_<name>, now DEPLOY_<name>: an older .env has them.
RENAMED_FOR_COMPOSE = frozenset(
    {
        "DROP_DIR",
        "IMAGE",
        "GPU_IMAGE",
        "GPU_BATCH_SIZE",
        "GPU_INFER_BATCH",
        "CPU_BATCH_SIZE",
        "CPU_INFER_BATCH",
    }
)


def unknown_setting_messages(
    names: Iterable[str], fields: Iterable[str], *, where: str
) -> list[str]:
    """One message per ``PULMO_*`` name that is no setting, naming the closest setting.

    Args:
        names: variable names as found (any case), e.g. the environment's.
        fields: the settings' field names (``drop_folder``).
        where: where the names were found, for the message (``the environment``, ``.env``).
    """
    known = sorted(field.upper() for field in fields)
    messages = []
    for name in sorted({name.upper() for name in names}):
        if not name.startswith(ENV_PREFIX) or name.startswith(TEST_PREFIXES):
            continue
        field = name.removeprefix(ENV_PREFIX)
        if field in known:
            continue
        if field in RENAMED_FOR_COMPOSE:
            messages.append(
                f"{name} in {where} is not a setting; docker compose reads DEPLOY_{field} "
                "instead: rename it"
            )
            continue
        close = difflib.get_close_matches(field, known, n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else " and is ignored"
        messages.append(f"{name} in {where} is not a setting{hint}")
    return messages


def _source_names(source: PydanticBaseSettingsSource) -> tuple[Mapping[str, str | None], str]:
    """The variables an environment or .env source read, and where they came from."""
    if not isinstance(source, EnvSettingsSource):
        return {}, ""
    if not isinstance(source, DotEnvSettingsSource):
        return source.env_vars, "the environment"
    files = source.env_file
    if isinstance(files, str | Path):
        return source.env_vars, str(files)
    return source.env_vars, ", ".join(str(file) for file in files or ())


def _is_local_host(host: str) -> bool:
    """A Unix socket (no host, or a socket folder) or a loopback address."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_weak_password(url: str) -> str:
    """Return a database or broker URL unchanged, or refuse the password in it.

    A placeholder (anything with "change me" in it, or a default such as ``password``) is refused
    everywhere; for a server on another host an empty password, or one shorter than
    ``MIN_REMOTE_PASSWORD`` characters, is refused too. URLs without a server (``sqlite:///…``,
    ``memory://``) pass. The message never repeats the password.

    Raises:
        ValueError: the password is unfit to deploy with.
    """
    parts = urlsplit(url)
    # libpq also takes the host as a query parameter: postgresql://user:pw@/db?host=db.example
    host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
    password = unquote(parts.password or "")
    kept = re.sub(r"[^a-z0-9]", "", password.lower())
    where = f"the password for {parts.scheme}://{host or 'localhost'}"
    if "changeme" in kept or kept in PLACEHOLDER_PASSWORDS:
        raise ValueError(f"{where} is a placeholder: set a random one (openssl rand -hex 24)")
    if _is_local_host(host):
        return url
    if not password:
        raise ValueError(f"{where} is empty: a server on another host needs one in the URL")
    if len(password) < MIN_REMOTE_PASSWORD:
        raise ValueError(f"{where} is shorter than {MIN_REMOTE_PASSWORD} characters")
    return url


# (0000,0600) and PS3.8 9.3.2: an AE title is 1 to 16 characters of the default character
# repertoire, without backslash or control characters, and not only spaces.
MAX_AE_TITLE_CHARS = 16


def check_ae_title(value: str) -> str:
    """Return ``value`` unchanged when it is a valid DICOM AE title.

    Raises:
        ValueError: empty, only spaces, over 16 characters, or a backslash or non-printable
            character in it.
    """
    if not value.strip() or len(value) > MAX_AE_TITLE_CHARS:
        raise ValueError(f"an AE title has 1 to {MAX_AE_TITLE_CHARS} characters: {value!r}")
    if "\\" in value or not all(" " <= char <= "~" for char in value):
        raise ValueError(f"an AE title has printable ASCII only, and no backslash: {value!r}")
    return value


def split_ae_titles(value: str) -> list[str]:
    """Comma-separated AE titles as a list, each stripped of surrounding spaces."""
    return [title.strip() for title in value.split(",") if title.strip()]


class Settings(BaseSettings):
    """Every tunable of PulmoScreen; the defaults run with no external server.

    Read from ``PULMO_*`` environment variables, then from ``.env``. Other names are ignored;
    a ``PULMO_*`` name that is no setting (a typing mistake does nothing) is logged as a warning
    naming the closest setting.
    """

    # URLs carry passwords: a refused value is named in the error, never printed.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(
        Path("var"),
        description="Folder of local state: the SQLite database when database_url is empty, "
        "the OpenVINO cache when openvino_cache is empty, Celery beat's celerybeat-schedule "
        "file, and the feature cache of `pulmoscreen content-check fit`.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the results database, e.g. "
        "postgresql://user:password@host/db (psycopg 3); empty: the SQLite file "
        "data_dir/pulmoscreen.db. A placeholder password is refused, and so is an empty one or "
        "one under 16 characters for a server on another host.",
    )
    broker_url: str = Field(
        "memory://",
        description="Celery broker URL, e.g. redis://:password@host:6379/0 (same password "
        "rules as database_url). memory:// is an in-process queue: only `pulmoscreen screen` "
        "and `demo`, which run a worker in their own process, can use it.",
    )
    drop_folder: Path = Field(
        Path("var/inbox"), description="Folder `pulmoscreen ingest` reads when none is given."
    )
    batch_size: int = Field(
        32,
        ge=1,
        le=512,
        description="Queued images one worker task takes at a time; a worker also holds this "
        "many unacknowledged messages so that its batches fill.",
    )
    infer_batch: int = Field(
        16,
        ge=1,
        le=512,
        description="Images per model call; the task's next images decode meanwhile.",
    )
    flush_interval: float = Field(
        1.0,
        gt=0,
        description="Seconds a partial batch waits for more images before it runs anyway.",
    )
    stable_seconds: float = Field(
        2.0,
        ge=0,
        description="Seconds a file's size and mtime must hold still before ingest reads it.",
    )
    truncated_grace_seconds: float = Field(
        180.0,
        ge=0,
        description="A file that reads as truncated but changed (by its mtime, or while ingest "
        "watched it) within this many seconds stays in the drop folder and is read again: its "
        "sender may only have paused (NFS, SMB, a slow modality). It is quarantined as truncated "
        "once it held still this long; 0: at once. `pulmoscreen screen` does not wait.",
    )
    poll_interval: float = Field(
        1.0, gt=0, description="Seconds between drop-folder scans of `pulmoscreen ingest --watch`."
    )
    storage_root: Path | None = Field(
        None,
        description="Shared storage that holds the drop folder: images.stored_path is stored "
        "relative to it, so workers on other hosts may mount it anywhere; unset: absolute paths, "
        "and every host needs the same mount point.",
    )
    model_path: Path | None = Field(
        None,
        description="The trained model to serve (.keras, or the compact .npz that `pulmoscreen "
        "train` writes), its card NAME.card.json beside it; unset: the shipped model when "
        "present, else an untrained ResNet50 whose results say so and flag nothing.",
    )
    imagenet_weights: Path | None = Field(
        None,
        description="Local ResNet50 ImageNet no-top weights file (resnet50_weights_tf_dim_"
        "ordering_tf_kernels_notop.h5) for training on sites without internet; unset: Keras's "
        "download cache.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="JSON flag thresholds that override the model card's and the active site "
        'calibration\'s (`pulmoscreen calibrate --apply`), e.g. {"tuberculosis": 0.4}: an '
        "image is flagged when a disease's probability reaches its threshold.",
    )
    inference_backend: Literal["auto", "keras", "openvino"] = Field(
        "auto",
        description="Runtime of every model call. auto: OpenVINO on CPU-only hosts where it "
        "is installed, Keras where a GPU is visible.",
    )
    inference_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto",
        description="Precision of model calls. auto: bf16 where the hardware computes it "
        "natively (GPU, AMX, AVX-512 BF16), else f32.",
    )
    openvino_cache: Path | None = Field(
        None,
        description="Converted OpenVINO models, one folder per model sha256; unset: "
        "data_dir/openvino.",
    )
    heatmap_dir: Path | None = Field(
        None,
        description="Folder of the heatmap PNGs of flagged images (8-bit grey, at the model "
        "input size; table heatmaps names each); unset: heatmaps/ beside processed/ in the drop "
        "folder that received the image, so hosts that share the drop folder share them.",
    )
    decode_threads: int = Field(
        0,
        ge=0,
        description="Threads decoding and preprocessing images beside inference; 0: one per CPU.",
    )
    j2k_reduced_decode: bool = Field(
        False,
        description="Decode JPEG 2000 images only down to the coarsest wavelet resolution at "
        "least twice the model's input side (about 1/50 of the work on 2.5k px images). The "
        "wavelet's low band is not an area average: the model input then differs from the full "
        "decode's by up to about 30/255 at the 99th percentile of pixels "
        "(docs/performance.md). Off: full decode, identical input.",
    )
    task_time_limit: int = Field(
        600,
        description="Hard time limit of one inference batch, seconds; its soft limit is 30 s "
        "earlier.",
    )
    visibility_timeout: int = Field(
        900,
        description="Seconds before Redis hands a message that a dead worker held to another "
        "worker.",
    )
    resend_after: int = Field(
        300,
        ge=1,
        description="Seconds an image may stay queued while the inference queue is empty before "
        "ingest sends its task again (a task lost with a killed worker).",
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Worker attempts at one image without a result (its worker died, or a "
        "temporary read or decode error) before it is quarantined: with the last error, or as "
        "worker_crash. Images tried before are tried one at a time.",
    )
    max_retries: int = Field(
        5,
        description="Re-sends of a batch's images, with a jittered backoff, after a failure of "
        "the worker itself (database, model file, memory, disk) or a temporary read error; then "
        "they stay queued for ingest's sweep. The nightly report task retries at least 10 times.",
    )

    site_timezone: str = Field(
        "UTC",
        description="IANA time zone of the site, e.g. Africa/Nairobi: a report's day, and the "
        "views' received_date, is a local calendar day.",
    )
    report_dir: Path = Field(
        Path("var/reports"),
        description="Reports go to report_dir/YYYY-MM-DD/ (`pulmoscreen report` and the "
        "nightly job).",
    )
    report_time: str = Field(
        "02:00", description="Local time (HH:MM) at which the nightly report job runs."
    )
    image_url_template: str = Field(
        "",
        description="Link to an image in reports, e.g. a PACS viewer URL with {study_uid}, "
        "{sop_uid} or {stored_path}; empty: a file:// link to the stored DICOM.",
    )
    receive_port: int = Field(
        11112,
        ge=1,
        le=65535,
        description="TCP port on which `pulmoscreen receive` accepts DICOM associations "
        "(C-STORE, C-ECHO).",
    )
    receive_ae_title: str = Field(
        "PULMOSCREEN",
        description="AE title of `pulmoscreen receive` (1 to 16 characters, no backslash): "
        "the Called AE Title that modalities and PACS send to.",
    )
    receive_allowed_callers: str = Field(
        "",
        description="Comma-separated Calling AE Titles that `pulmoscreen receive` accepts "
        "associations from, e.g. CR_ROOM1,PACS; empty: any caller.",
    )
    outbox_dir: Path = Field(
        Path("var/outbox"),
        description="Folder where `pulmoscreen send` writes the DICOM results (an SR per "
        "screened image, a heatmap Secondary Capture per flagged one) before sending them.",
    )
    destination_host: str = Field(
        "",
        description="Host of the PACS or DICOM node that receives the results by C-STORE; "
        "empty: results are only written to outbox_dir.",
    )
    destination_port: int = Field(
        104, ge=1, le=65535, description="TCP port of the results destination."
    )
    destination_ae_title: str = Field(
        "ANY-SCP", description="Called AE Title of the results destination."
    )
    send_ae_title: str = Field(
        "PULMOSCREEN", description="Calling AE Title `pulmoscreen send` presents."
    )
    send_retry_seconds: float = Field(
        30.0,
        gt=0,
        description="Wait before the first retry of a failed send; it doubles with each "
        "failure, up to send_retry_max_seconds. Failed sends stay in SQL (table deliveries) "
        "and are retried, never dropped.",
    )
    send_retry_max_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two retries of a failed send."
    )
    send_interval: float = Field(
        5.0, gt=0, description="Seconds between two rounds of `pulmoscreen send`."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The default sources in their default order, after a warning for each ``PULMO_*``
        name in the environment or the .env file in force that is no setting."""
        for source in (env_settings, dotenv_settings):
            names, where = _source_names(source)
            for message in unknown_setting_messages(names, settings_cls.model_fields, where=where):
                log.warning("%s", message)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("database_url", "broker_url")
    @classmethod
    def _strong_password(cls, value: str) -> str:
        return refuse_weak_password(value)

    @field_validator("receive_ae_title", "destination_ae_title", "send_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("receive_allowed_callers")
    @classmethod
    def _ae_titles(cls, value: str) -> str:
        for title in split_ae_titles(value):
            check_ae_title(title)
        return value

    @field_validator("site_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("report_time")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        try:
            time.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"report_time must be HH:MM, not {value!r}") from exc
        return value

    def report_clock(self) -> time:
        """The local time of day at which the nightly report runs."""
        return time.fromisoformat(self.report_time)

    def resolved_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pulmoscreen.db').resolve()}"

    def allowed_callers(self) -> list[str]:
        """The Calling AE Titles `pulmoscreen receive` accepts; empty: any."""
        return split_ae_titles(self.receive_allowed_callers)

    def resolved_openvino_cache(self) -> Path:
        return self.openvino_cache or self.data_dir / "openvino"

    def resolved_model_path(self) -> Path | None:
        """The configured model, else the shipped one when present, else None (untrained)."""
        if self.model_path is not None:
            return self.model_path
        return DEFAULT_MODEL_PATH if DEFAULT_MODEL_PATH.exists() else None


@cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
