from libs.common.service import run_service
from services.api.service import ApiService

if __name__ == "__main__":
    run_service(ApiService)
