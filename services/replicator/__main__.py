import os

from libs.common.service import run_service
from libs.common.settings import load_settings
from services.replicator.service import ReplicatorService

if __name__ == "__main__":
    # Projecting into the OLAP store is background work: when the cores are busy it yields to
    # the task path and catches up afterwards (its lag is a metric). Niceness only goes up.
    os.nice(max(0, load_settings().replicator_nice))
    run_service(ReplicatorService)
