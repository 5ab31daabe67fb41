"""A Flask app whose view sends a job and whose handler updates a Flask-SQLAlchemy model (bgjob.contrib.flask).

    pip install "bgjob[flask,server]" flask-sqlalchemy
    flask --app example_flask.app bgjob worker        # terminal 1: runs `count_visit` jobs
    flask --app example_flask.app run                 # terminal 2: http://127.0.0.1:5000/visit/ada

Without BGJOB_URL both start (or find) this project's embedded nats-server.
"""

from __future__ import annotations

import os

from flask import Flask, current_app, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

import bgjob
from bgjob.contrib.flask import BgJob, get_request_id

db = SQLAlchemy()
bgjob_ext = BgJob()


class Visits(db.Model):  # type: ignore[name-defined,misc]
    name: Mapped[str] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(default=0)


@bgjob_ext.handler("count_visit", time_limit=30)
def count_visit(job: bgjob.Job) -> bgjob.Result:
    """Runs in the worker, inside app.app_context(): current_app and db.session work, and the session is removed
    after the job as after a request."""
    row = db.session.get(Visits, job.arg["name"]) or Visits(name=job.arg["name"], count=0)
    row.count += 1
    db.session.add(row)
    db.session.commit()
    current_app.logger.info("visit %s counted (request %s)", row.name, get_request_id())
    return bgjob.Complete()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///example_flask.sqlite")
    app.config["BGJOB_QUEUES"] = ["default"]  # the BGJOB_* keys are bgjob_django's BGJOB keys, prefixed
    db.init_app(app)
    bgjob_ext.init_app(app)
    with app.app_context():
        db.create_all()

    @app.get("/visit/<name>")
    def visit(name: str) -> object:
        job_id = bgjob_ext.send_job("count_visit", {"name": name})  # carries this request's X-Request-ID
        return jsonify(job=job_id)

    @app.get("/visits/<name>")
    def visits(name: str) -> object:
        row = db.session.get(Visits, name)
        return jsonify(name=name, count=row.count if row else 0)

    return app


app = create_app()
