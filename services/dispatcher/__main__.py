from libs.common.service import run_service
from services.dispatcher.service import DispatcherService

if __name__ == "__main__":
    run_service(DispatcherService)
