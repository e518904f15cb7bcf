"""A quiet console: the progress bar, the step lines and motif's own messages stay on the terminal; what vLLM,
Ray, DeepSpeed and transformers print goes to RUN_DIR/logs/ (`--show-logs` keeps it on the console)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Set for the whole job when logs are not shown: the folder each Ray worker process writes its output to.
LOG_DIR_ENV = "MOTIF_LOG_DIR"
# Set per actor (in its runtime env): the name of its log file; other workers are named by their pid.
LOG_NAME_ENV = "MOTIF_LOG_NAME"
# Run in every Ray worker process of the job before it hosts anything (Ray's worker_process_setup_hook).
WORKER_SETUP_HOOK = "cluster.console.redirect_worker_output"

LIBRARY_LOGGERS = ("ray", "vllm", "deepspeed", "DeepSpeed", "transformers", "datasets", "peft", "accelerate",
                   "torch", "filelock", "urllib3", "py.warnings")


def redirect_worker_output() -> None:
    """Point this worker's stdout and stderr (file descriptors, so C++ and subprocess output follow) at
    MOTIF_LOG_DIR/<actor name>.log. A node that cannot reach the run folder keeps Ray's own worker log."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir:
        return
    name = os.environ.get(LOG_NAME_ENV) or f"worker-{os.getpid()}"
    try:
        os.makedirs(log_dir, exist_ok=True)
        fd = os.open(os.path.join(log_dir, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        return
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def log_name(name: str) -> dict[str, str]:
    """An actor's environment entry naming its log file."""
    return {LOG_NAME_ENV: name}


class _Divert(logging.Filter):
    """Hands a logger's records to the log file and stops them there, so a console handler that the library adds
    later, when it is imported (DeepSpeed does), never sees them."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.handle(record)
        return False


def quiet_driver(log_dir: Path) -> None:
    """Send the libraries' Python logging and warnings in this process to LOG_DIR/driver.log. Idempotent; run it
    again after ray.init, which drops the handlers of Ray's loggers."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = str((log_dir / "driver.log").resolve())
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        divert = next((f for f in logger.filters if isinstance(f, _Divert) and f.handler.baseFilename == path), None)
        if divert is None:
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            divert = _Divert(handler)
            logger.filters = [divert]
        # Records of child loggers (ray._private...) reach this logger's handlers, not its filters.
        logger.handlers = [divert.handler]
        logger.propagate = False
    logging.captureWarnings(True)


def divert_raylet_messages() -> None:
    """Ray's driver prints what the raylet reports (e.g. "A worker died or was killed while executing a task")
    straight to stdout from a listener thread, past logging and `log_to_driver`. With a quiet console those lines
    go to the driver log instead; the run's own message says what happened and what to do. Ray looks the
    printer up by name on every message, so replacing it here takes effect for the listener too."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "motif_diverted", False):
        return

    def print_or_log(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                logging.getLogger("ray").warning("(raylet) %s", line)
        else:
            original(data, ignore_prefix)

    print_or_log.motif_diverted = True
    ray_worker.print_to_stdstream = print_or_log
