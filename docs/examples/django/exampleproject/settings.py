"""Settings of the example project: only what the scheduler recipe needs."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["scheduling"]
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TIME_ZONE = "UTC"

PLANLAGT_START_WITH_APP = os.environ.get("PLANLAGT_START_WITH_APP", "1") == "1"
"""Start a scheduler in every web server process; set the variable to 0 when
``manage.py runscheduler`` runs the jobs in processes of their own instead."""

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"planlagt_core": {"handlers": ["console"], "level": "INFO"}},
}
