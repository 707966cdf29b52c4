import contextlib
import os

from libs.common.service import run_service
from libs.common.settings import load_settings
from services.replicator.service import ReplicatorService


def _lower_priority(nice: int) -> None:
    """Projecting into the OLAP store is background work: when the cores are busy it yields to
    the task path and catches up afterwards (its lag is a metric). Niceness only goes up."""
    if nice <= 0:
        return
    os.nice(nice)
    # With autogroup scheduling (the Linux default for desktop and many server kernels) a
    # process's nice only ranks it within its session; started in a session of its own, the
    # replicator would still get an equal share against each service. Its group's nice counts.
    with contextlib.suppress(OSError):
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))


if __name__ == "__main__":
    _lower_priority(load_settings().replicator_nice)
    run_service(ReplicatorService)
