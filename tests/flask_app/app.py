"""A Flask app for tests/test_flask.py: a view sending jobs, handlers updating a Flask-SQLAlchemy model.

Reads BGJOB_URL and BGJOB_PREFIX from the environment (bgjob's own fallback) and the SQLite file from
FLASK_APP_DB."""

from __future__ import annotations

import os

from flask import Flask, current_app, g, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

import bgjob
from bgjob.contrib.flask import BgJob, get_request_id, send_job

db = SQLAlchemy()
bgjob_ext = BgJob()


class Run(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str]
    n: Mapped[int]
    request_id: Mapped[str | None]
    app_name: Mapped[str]


@bgjob_ext.handler("record")
def record(job: bgjob.Job) -> bgjob.Result:
    """Store the job as a Run row through db.session (needs the app context)."""
    db.session.add(Run(job_id=job.id, n=job.arg["n"], request_id=get_request_id(), app_name=current_app.name))
    db.session.commit()
    return bgjob.Complete()


@bgjob_ext.handler("fail")
def fail(job: bgjob.Job) -> bgjob.Result:
    return bgjob.MoveToDlq(RuntimeError(f"failing on purpose for {current_app.name}"))


def create_app() -> Flask:
    app = Flask("flask_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{os.environ['FLASK_APP_DB']}"
    app.config["BGJOB_QUEUES"] = ["default"]
    db.init_app(app)
    bgjob_ext.init_app(app)
    with app.app_context():
        db.create_all()

    @app.get("/plain")
    def plain() -> object:
        return "ok"

    @app.get("/send")
    def send() -> object:
        job_type = request.args.get("type", "record")
        n = int(request.args.get("n", "0"))
        # half through the module-level helper, half through the extension: both use the app's client
        job_id = send_job(job_type, {"n": n}) if n % 2 else bgjob_ext.send_job(job_type, {"n": n})
        return jsonify(id=job_id, request_id=g.request_id)

    return app
