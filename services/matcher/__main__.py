"""`python -m services.matcher`."""

from libs.common.service import run_service
from services.matcher.service import MatcherService


def main() -> None:
    run_service(MatcherService)


if __name__ == "__main__":
    main()
