from libs.common.service import run_service
from services.replicator.service import ReplicatorService

if __name__ == "__main__":
    run_service(ReplicatorService)
