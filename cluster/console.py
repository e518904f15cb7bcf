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


def quiet_driver(log_dir: Path) -> None:
    """Send the libraries' Python logging and warnings in this process to LOG_DIR/driver.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
