"""The admin views behind DeadLetterAdmin, QueueAdmin and WorkflowRunAdmin, backed by JetStream through the
project's client.

A page of dead letters is one bounded scan of the DLQ stream (`client.dlq.list` with `before` paging) plus
one count: pages stay fast however many dead letters there are.

Arg, headers, error and traceback are shown masked (`DeadLetter.masked_*`) unless the user has the
`bgjob_django.view_deadletter_payload` permission (superusers have it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypedDict
from urllib.parse import urlencode

import django
from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import BLANK_CHOICE_DASH
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

import bgjob
from bgjob import job as jobmod
from bgjob.arg_match import parse_value
from bgjob.cli import dead_letters
from bgjob.dead_letters import MAX_SEQ
from bgjob.job import validate_reason
from bgjob.workflows import _RUN_ID, list_runs

from .conf import interactive_client
from .display import job_progress, live_workers, pretty_arg, shown_payload
from .models import DeadLetter, WorkflowRun
from .registry import registry
from .relay import backlog

log = logging.getLogger("bgjob_django.admin")

PAGE_SIZE = 50
#: the most dead letters one "Erase data matching" scans (one stream read each); the page says if it stopped.
ERASE_SCAN_LIMIT = 10_000
FILTERS = (("queue", "queue"), ("type", "job type"), ("reason", "reason"))
#: the job type and reason filters offer what the newest this many dead letters hold (one server read).
FILTER_SCAN_LIMIT = 1000
#: the workflow runs page lists the newest this many runs.
WORKFLOW_RUNS_SHOWN = 50
#: what reading a stored run raises when its record is not what bgjob writes (hostile or corrupt JSON).
_MALFORMED = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


def _unavailable_on_nats_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """NATS unreachable or refusing: a clear admin page (503), not a server error. The views read through
    conf.interactive_client(), whose retries stop after about two seconds, so the page comes that fast."""

    @functools.wraps(view)
    def wrapper(self: _Views, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(self, request, *args, **kwargs)
        except (bgjob.ConnectionError, bgjob.ServerVersionError, bgjob.ServerNotFound, bgjob.ServerRefused) as exc:
            log.warning("admin: bgjob unavailable: %s", exc)
            context = self.context(request, title="Background jobs are unavailable", here="Unavailable", error=str(exc))
            return TemplateResponse(request, "bgjob_django/admin/unavailable.html", context, status=503)

    return wrapper


class _Views:
    def __init__(self, model_admin: ModelAdmin[Any]) -> None:
        self.model_admin = model_admin
        self.opts = model_admin.model._meta

    def context(self, request: HttpRequest, *, here: str | None = None, **extra: Any) -> dict[str, Any]:
        """The admin's page context, with breadcrumbs ending in `here` (default: this model's list)."""
        site = self.model_admin.admin_site.name
        app_url = reverse("admin:app_list", args=[self.opts.app_label], current_app=site)
        crumbs = [
            (_("Home"), reverse("admin:index", current_app=site)),
            (self.opts.app_config.verbose_name, app_url),
            (capfirst(self.opts.verbose_name_plural), self.url("changelist") if here else None),
        ]
        if here:
            crumbs.append((here, None))
        return {
            **self.model_admin.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": self.model_admin.has_view_permission(request),
            "crumbs": crumbs,
            # Django 6.1's admin marks breadcrumbs up as a list (its CSS styles ol.breadcrumbs); 5.2 and 6.0 as a
            # div with separators (their CSS styles only div.breadcrumbs).
            "ol_breadcrumbs": django.VERSION >= (6, 1),
            **extra,
        }

    def url(self, view: str, *args: Any) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}", args=args,
                       current_app=self.model_admin.admin_site.name)  # fmt: skip

    def require(self, allowed: bool) -> None:
        if not allowed:
            raise PermissionDenied


class DeadLetterViews(_Views):
    """List, detail, retry, delete and purge of dead letters."""

    # -- reading -------------------------------------------------------------------------------------
    @_unavailable_on_nats_errors
    def changelist(self, request: HttpRequest) -> HttpResponse:
        """The list, rendered by the running Django's own admin/change_list.html (search form, actions, filter
        panel and their layout are the version's); the table and the pager are ours. Pages go by DLQ sequence:
        `before=SEQ` the older page, `after=SEQ` the newer one."""
        self.require(self.model_admin.has_view_permission(request))
        if request.method == "POST":
            return self._action(request)
        dlq = interactive_client().dlq
        filters = self._filters(request)
        query = request.GET.get("q", "").strip()
        before = _positive_int(request.GET.get("before"))
        after = None if before else _positive_int(request.GET.get("after"))
        if query:
            entries = self._search(dlq, query, filters)
            total, newer, has_older = len(entries), 0, False
        else:
            if after:
                entries = dlq.list(limit=PAGE_SIZE, after=after, **_api(filters))
            else:
                entries = dlq.list(limit=PAGE_SIZE + 1, before=before, **_api(filters))
            has_older, entries = len(entries) > PAGE_SIZE, entries[:PAGE_SIZE]
            total = dlq.count(**_api(filters))
            # the first page has nothing newer; another one's position is how many are stored after its first
            newer = dlq.count(**_api(filters), after=entries[0].seq) if entries and (before or after) else 0
            if after:
                has_older = newer + len(entries) < total
        params = {k: v for k, v in {**filters, "q": query}.items() if v}
        paged = bool(before or after)
        visible = self._payload_visible(request)
        rows = [(e, e.error if visible else e.masked_error) for e in entries]
        actions = self._actions(request)
        context = self.context(
            request,
            title="Dead letters",
            subtitle=None,
            entries=entries,
            rows=[{"entry": e, "error": error, "url": self._detail_url(e.id)} for e, error in rows],
            total=total,
            first_position=newer + 1,
            last_position=newer + len(entries),
            query=query,
            has_filters_active=any(filters.values()),
            newest_url=self.url("changelist") + _query(params) if paged and (newer or not entries) else None,
            newer_url=_qs({**params, "after": entries[0].seq}) if entries and newer else None,
            older_url=_qs({**params, "before": entries[-1].seq}) if entries and has_older else None,
            purge_url=self.url("purge") + _query(filters),
            erase_url=self.url("erase") + _query(filters),
            can_erase=self._can_erase(request),
            actions=actions,
            has_change_permission=self.model_admin.has_change_permission(request),
            has_delete_permission=self.model_admin.has_delete_permission(request),
            # Django 6.0+ puts the pager in a footer bar (div.changelist-footer > nav.paginator); 5.2 a p.paginator
            changelist_footer=django.VERSION >= (6, 0),
            **self._native_changelist(request, filters, query, entries, actions),
        )
        return TemplateResponse(request, "bgjob_django/admin/deadletter_list.html", context)

    def _native_changelist(self, request: HttpRequest, filters: dict[str, str], query: str,
                           entries: list[bgjob.DeadLetter], actions: dict[str, str]) -> dict[str, Any]:  # fmt: skip
        """What Django's admin/change_list.html, search_form.html, filter.html and actions.html read, as
        ModelAdmin.changelist_view would pass it: `cl` (a stand-in for its ChangeList: this page's dead letters,
        the search, the filter specs), `action_form`, `media` (actions.js and the rest), the selection notes.

        "Select all N across pages" is not offered (result_count is this page's): the actions act on the ids
        sent, never on a select_across."""
        active = {k: v for k, v in filters.items() if v}
        specs = [SimpleNamespace(template="admin/filter.html", title=spec["title"],
                                 choices=lambda cl, choices=spec["choices"]: choices)
                 for spec in self._filter_specs(filters, {**active, "q": query} if query else active)]  # fmt: skip
        cl = SimpleNamespace(
            opts=self.opts, formset=None, date_hierarchy=None, is_popup=False, add_facets=False,
            is_facets_optional=False, has_filters=True, filter_specs=specs, has_active_filters=bool(active),
            clear_all_filters_qs=_qs({"q": query} if query else {}), search_fields=("id",), query=query,
            search_help_text="Find a dead letter by its exact job id.", params=active, result_list=entries,
            result_count=len(entries), full_result_count=len(entries), show_admin_actions=bool(actions),
        )  # fmt: skip
        action_form = None
        media = self.model_admin.media
        if actions:
            action_form = self.model_admin.action_form(auto_id=None)
            action_form.fields["action"].choices = [*_blank_choice(), *actions.items()]
            media += action_form.media
        selected_all = ngettext("%(total_count)s selected", "All %(total_count)s selected", len(entries))
        return {
            "cl": cl,
            "action_form": action_form,
            "media": media,
            "actions_on_top": self.model_admin.actions_on_top,
            "actions_on_bottom": self.model_admin.actions_on_bottom,
            "actions_selection_counter": self.model_admin.actions_selection_counter,
            "module_name": str(self.opts.verbose_name_plural),
            "selection_note": _("0 of %(cnt)s selected") % {"cnt": len(entries)},
            "selection_note_all": selected_all % {"total_count": len(entries)},
        }

    def _detail_url(self, entry_id: str) -> str | None:
        """The detail page of a dead letter; None for an id no URL can hold (the row shows it unlinked)."""
        try:
            return self.url("change", entry_id)
        except NoReverseMatch:
            return None

    @_unavailable_on_nats_errors
    def detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self.require(self.model_admin.has_view_permission(request))
        entry = self._get(request, object_id)
        if entry is None:
            return self._gone(request, object_id)
        unmasked = self._payload_visible(request)
        payload, payload_cut, payload_shown = shown_payload(entry, masked=not unmasked)
        context = self.context(
            request,
            title=f"Dead letter {entry.id}",
            time_zone=timezone.get_current_timezone_name(),
            payload_cut=payload_cut,
            payload_shown=payload_shown,
            sent_id=entry.headers.get("Bgjob-Id"),
            here=entry.id,
            subtitle=None,
            object=DeadLetter(id=entry.id),
            entry=entry,
            masked=not unmasked,
            payload=payload,
            headers=sorted((entry.headers if unmasked else entry.masked_headers).items()),
            error=entry.error if unmasked else entry.masked_error,
            traceback=entry.traceback if unmasked else entry.masked_traceback,
            has_change_permission=self.model_admin.has_change_permission(request),
            has_delete_permission=self.model_admin.has_delete_permission(request),
            changelist_url=self.url("changelist") + _qs({"queue": entry.queue}),
        )
        return TemplateResponse(request, "bgjob_django/admin/deadletter_detail.html", context)

    # -- changing ------------------------------------------------------------------------------------
    @_unavailable_on_nats_errors
    def retry(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: send the job back to its queue. GET (a link followed, a reload): ask first, as delete does."""
        self.require(self.model_admin.has_change_permission(request))
        if request.method != "POST":
            entry = self._get(request, object_id)
            if entry is None:
                return self._gone(request, object_id)
            return self._confirm(request, title="Retry dead letter?", object=DeadLetter(id=entry.id), ids=[entry.id],
                                 question=f"Send job {entry.id} ({entry.type}) back to queue {entry.queue}?",
                                 action_url=self.url("retry", entry.id), confirm_label="Yes, retry it")  # fmt: skip
        try:
            interactive_client().dlq.retry(object_id)
        except bgjob.DeadLetterNotFound:
            messages.warning(request, f"Dead letter {object_id} is gone (retried, deleted or purged meanwhile).")
        except bgjob.InvalidJob as exc:
            messages.error(request, f"Dead letter {object_id} was not retried: {exc}")
        else:
            self._log(request, [object_id], CHANGE, "Retried: sent back to its queue.")
            messages.success(request, f"Dead letter {object_id} was sent back to its queue.")
        return HttpResponseRedirect(self.url("changelist"))

    @_unavailable_on_nats_errors
    def delete(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self.require(self.model_admin.has_delete_permission(request))
        entry = self._get(request, object_id)
        if entry is None:
            return self._gone(request, object_id)
        if request.method == "POST":
            try:
                interactive_client().dlq.delete(entry.id)
            except bgjob.DeadLetterNotFound:
                pass
            self._log(request, [entry.id], DELETION, "Deleted from the dead-letter queue.")
            messages.success(request, f"Dead letter {entry.id} was deleted.")
            return HttpResponseRedirect(self.url("changelist"))
        return self._confirm(request, title="Delete dead letter?", object=DeadLetter(id=entry.id), ids=[entry.id],
                             question=f"Delete the dead letter of job {entry.id} ({entry.type} on {entry.queue})? "
                             "It cannot be retried afterwards.", action_url=self.url("delete", entry.id))  # fmt: skip

    @_unavailable_on_nats_errors
    def purge(self, request: HttpRequest) -> HttpResponse:
        self.require(self.model_admin.has_delete_permission(request))
        source = request.POST if request.method == "POST" else request.GET
        filters = self._filters(request, source)
        dlq = interactive_client().dlq
        described = _describe(filters)
        if request.method == "POST":
            up_to = _positive_int(request.POST.get("up_to")) if request.POST.get("up_to") != "0" else 0
            if any(source.get(key, "").strip() and not filters[key] for key, _ in FILTERS):
                messages.error(request, "Nothing was purged: a filter was invalid, and a purge never widens.")
                return HttpResponseRedirect(self.url("changelist") + _query(filters))
            if up_to is None:
                messages.error(request, "The purge was not confirmed from its confirmation page: nothing was deleted.")
                return HttpResponseRedirect(self.url("purge") + _query(filters))
            purged = dlq.purge(**_api(filters), up_to=up_to)
            kept = dlq.count(**_api(filters), after=up_to)
            self._log_purge(request, purged, described)
            text = f"Purged {dead_letters(purged)} ({described})."
            if kept:
                text += (f" {dead_letters(kept)} that arrived after the confirmation page was shown "
                         f"{'were' if kept > 1 else 'was'} kept.")  # fmt: skip
            messages.success(request, text)
            return HttpResponseRedirect(self.url("changelist") + _query(filters))
        up_to = dlq.last_seq()  # the purge deletes what this page counts, nothing stored after it
        count = dlq.count(**_api(filters)) - dlq.count(**_api(filters), after=up_to)
        question = (f"Delete all {dead_letters(count)} ({described})? This cannot be undone. Dead letters "
                    "arriving after this page was shown are kept.")  # fmt: skip
        hidden = [*((k, v) for k, v in filters.items() if v), ("up_to", up_to)]
        return self._confirm(request, title="Purge dead letters?", count=count, filters=filters, ids=[],
                             question=question, action_url=self.url("purge"), hidden=hidden,
                             cancel_url=self.url("changelist") + _query(filters))  # fmt: skip

    @_unavailable_on_nats_errors
    def erase(self, request: HttpRequest) -> HttpResponse:
        """"Erase data matching": a JSON path and a value (GET: the form); POST: the matches, masked, to confirm;
        POST with post=yes: delete them (a data-subject request). Needs delete_deadletter and
        view_deadletter_payload: matching on content reads it (the matches would tell a guessed value)."""
        self.require(self._can_erase(request))
        source = request.POST if request.method == "POST" else request.GET
        filters = self._filters(request, source)
        path, text = source.get("path", "").strip(), source.get("value", "").strip()
        form = {"path": path, "value": text, "filters": [(k, v) for k, v in filters.items() if v]}
        if request.method != "POST":
            return self._erase_form(request, form)
        try:
            match = {path: parse_value(text)}
            dlq = interactive_client().dlq
            if request.POST.get("post") == "yes":
                scan = dlq.erase(match, scan_limit=ERASE_SCAN_LIMIT, **_api(filters))
            else:
                scan = dlq.find(match, scan_limit=ERASE_SCAN_LIMIT, **_api(filters))
        except (bgjob.InvalidMatch, bgjob.InvalidJob) as exc:
            return self._erase_form(request, form, error=str(exc))
        described = f"{path} = {text} ({_describe(filters)})"
        reach = "" if scan.complete else (f" The scan stopped after {scan.scanned} dead letters, before the end of "
                                          "the DLQ: run it again for the rest.")  # fmt: skip
        if request.POST.get("post") == "yes":
            erased = [e.id for e in scan.matches]
            self._log(request, erased, DELETION, f"Erased: arg matched {path}.")
            messages.success(request, f"Erased {len(erased)} dead letters matching {described}.{reach}")
            if scan.warning:
                messages.warning(request, f"Not erased: {scan.warning}.")
            return HttpResponseRedirect(self.url("changelist"))
        question = (f"Erase the {len(scan.matches)} dead letters whose arg matches {described}? They cannot be "
                    f"retried afterwards.{reach}")  # fmt: skip
        return self._confirm(request, title="Erase data matching?", ids=[], question=question, warning=scan.warning,
                             matches=[(e, pretty_arg(e)) for e in scan.matches], action_url=self.url("erase"),
                             hidden=[("path", path), ("value", text), *form["filters"]])  # fmt: skip

    def _erase_form(self, request: HttpRequest, form: dict[str, Any], error: str | None = None) -> HttpResponse:
        context = self.context(request, title="Erase data matching", here="Erase data matching", subtitle=None,
                               form=form, error=error, scan_limit=ERASE_SCAN_LIMIT, action_url=self.url("erase"),
                               cancel_url=self.url("changelist"))  # fmt: skip
        return TemplateResponse(request, "bgjob_django/admin/deadletter_erase.html", context, status=400 if error
                                else 200)  # fmt: skip

    def _action(self, request: HttpRequest) -> HttpResponse:
        action = request.POST.get("action", "")
        ids = [i for i in request.POST.getlist("_selected_action") if i]
        back = self.url("changelist") + _query(self._filters(request))
        if action not in self._actions(request):
            messages.error(request, "Choose an action you are allowed to take.")
            return HttpResponseRedirect(back)
        if not ids:
            messages.warning(request, "Select dead letters to act on first.")
            return HttpResponseRedirect(back)
        dlq = interactive_client().dlq
        done, gone = [], 0
        if action == "delete_selected" and request.POST.get("post") != "yes":
            these = "this dead letter" if len(ids) == 1 else f"these {len(ids)} dead letters"
            return self._confirm(request, title="Delete dead letters?", ids=ids, action_url=back,
                                 question=f"Delete {these}? {'It' if len(ids) == 1 else 'They'} cannot be retried "
                                 "afterwards.", hidden=[("action", action)], cancel_url=back)  # fmt: skip
        refused: list[str] = []
        for entry_id in ids:
            try:
                (dlq.retry if action == "retry_selected" else dlq.delete)(entry_id)
            except bgjob.DeadLetterNotFound:
                gone += 1
            except bgjob.InvalidJob as exc:
                refused.append(f"{entry_id}: {exc}")
            else:
                done.append(entry_id)
        verb = "Retried" if action == "retry_selected" else "Deleted"
        self._log(request, done, CHANGE if action == "retry_selected" else DELETION, f"{verb} from the admin.")
        text = f"{verb} {len(done)} dead letter{'s' if len(done) != 1 else ''}."
        messages.success(request, text + (f" {gone} were gone already." if gone else ""))
        for refusal in refused:
            messages.error(request, f"Not {verb.lower()}: {refusal}")
        return HttpResponseRedirect(back)

    # -- helpers -------------------------------------------------------------------------------------
    def _payload_visible(self, request: HttpRequest) -> bool:
        """Whether the user may see arg, headers, error and traceback unmasked (view_deadletter_payload)."""
        return request.user.has_perm(f"{self.opts.app_label}.view_deadletter_payload")

    def _can_erase(self, request: HttpRequest) -> bool:
        """Whether the user may use "Erase data matching": delete_deadletter and view_deadletter_payload (its
        confirmation lists the dead letters holding a value, so it reads content)."""
        return self.model_admin.has_delete_permission(request) and self._payload_visible(request)

    def _actions(self, request: HttpRequest) -> dict[str, str]:
        actions = {}
        if self.model_admin.has_change_permission(request):
            actions["retry_selected"] = "Retry selected dead letters"
        if self.model_admin.has_delete_permission(request):
            actions["delete_selected"] = "Delete selected dead letters"
        return actions

    def _get(self, request: HttpRequest, object_id: str) -> bgjob.DeadLetter | None:
        """The dead letter, or None when there is none by that id (retried, deleted or purged meanwhile)."""
        try:
            return interactive_client().dlq.get(object_id)
        except bgjob.DeadLetterNotFound:
            return None

    def _gone(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Back to the list, saying so: what the admin does for an object that does not exist."""
        messages.warning(request, f"There is no dead letter with job id “{object_id}”: it was retried, deleted or "
                                  "purged, or the id is wrong.")  # fmt: skip
        return HttpResponseRedirect(self.url("changelist"))

    @staticmethod
    def _search(dlq: bgjob.DeadLetters, query: str, filters: dict[str, str]) -> list[bgjob.DeadLetter]:
        """The dead letter whose job id is `query`, if it matches the filters too."""
        try:
            entry = dlq.get(query)
        except bgjob.DeadLetterNotFound:
            return []
        keep = all(not v or getattr(entry, k) == v for k, v in filters.items())
        return [entry] if keep else []

    def _filters(self, request: HttpRequest, source: QueryDict | None = None) -> dict[str, str]:
        """queue / type / reason from the query string; invalid values are dropped with a message."""
        source = request.GET if source is None else source
        found = {}
        for key, what in FILTERS:
            value = source.get(key, "").strip()
            if value and not _valid_filter(key, value):
                messages.error(request, f"Ignored the invalid {what} {value!r}.")
                value = ""
            found[key] = value
        return found

    def _filter_specs(self, filters: dict[str, str], params: dict[str, str]) -> list[dict[str, Any]]:
        client = interactive_client()
        choices = {
            "queue": client.queues(),
            # what failed (unknown types and task: types included), not only what this site handles
            "type": client.dlq.job_types(scan_limit=FILTER_SCAN_LIMIT),
            "reason": client.dlq.reasons(scan_limit=FILTER_SCAN_LIMIT),
        }
        specs = []
        for key, what in FILTERS:
            values = list(dict.fromkeys([*choices[key], *([filters[key]] if filters[key] else [])]))
            rest = {k: v for k, v in params.items() if k != key}
            specs.append({
                "title": what,
                "choices": [{"display": "All", "selected": not filters[key], "query_string": _qs(rest)}] + [
                    {"display": v, "selected": filters[key] == v, "query_string": _qs({**rest, key: v})}
                    for v in values
                ],
            })  # fmt: skip
        return specs

    def _confirm(self, request: HttpRequest, **extra: Any) -> HttpResponse:
        extra.setdefault("cancel_url", self.url("changelist"))
        context = self.context(request, subtitle=None, here=extra["title"], **extra)
        return TemplateResponse(request, "bgjob_django/admin/deadletter_confirm.html", context)

    def _log_purge(self, request: HttpRequest, purged: int, described: str) -> None:
        """One history entry for a purge, named for what it removed (it has no single object)."""
        LogEntry.objects.create(user_id=_user_id(request), content_type_id=_content_type_id(DeadLetter),
                                object_id=None, object_repr=f"Purge of {dead_letters(purged)} ({described})"[:200],
                                action_flag=DELETION, change_message=f"Purged {dead_letters(purged)} ({described}).")

    def _log(self, request: HttpRequest, ids: list[str], flag: int, message: str) -> None:
        if ids:
            LogEntry.objects.log_actions(user_id=_user_id(request), queryset=[DeadLetter(id=i) for i in ids],
                                         action_flag=flag, change_message=message)  # fmt: skip


class QueueViews(_Views):
    """The overview: per-queue counts (pending, in flight, retrying, scheduled, dead), the outbox backlog, periodic
    jobs, live workers, and a "Find a job by id" box (its state and lifecycle events, bgjob.events)."""

    @_unavailable_on_nats_errors
    def overview(self, request: HttpRequest) -> HttpResponse:
        self.require(self.model_admin.has_view_permission(request))
        client = interactive_client()
        stats = [client.queue_stats(name) for name in client.queues()]
        can_see_dlq = request.user.has_perm(f"{self.opts.app_label}.view_deadletter")
        dlq_url = reverse(f"admin:{self.opts.app_label}_deadletter_changelist") if can_see_dlq else None
        context = self.context(
            request,
            title="Queues and workers",
            subtitle=None,
            time_zone=timezone.get_current_timezone_name(),
            server=client.url,
            queues=[{"stats": s, "dlq_url": dlq_url + _qs({"queue": s.queue}) if dlq_url else None} for s in stats],
            schedules=client.schedules(),
            workers=live_workers(client),
            handlers=registry.types(),
            dlq_url=dlq_url,
            **_outbox(),
            **_find_job(client, request.GET.get("job", "").strip(), unmasked=self._payload_visible(request)),
        )
        return TemplateResponse(request, "bgjob_django/admin/overview.html", context)

    def _payload_visible(self, request: HttpRequest) -> bool:
        """Whether the user may see a job's progress unmasked: view_deadletter_payload, as for its arg."""
        return request.user.has_perm(f"{self.opts.app_label}.view_deadletter_payload")


class WorkflowRunViews(_Views):
    """Workflow runs (bgjob.workflows): the newest runs with their steps' counts by state and the failed step; a
    run's steps (state, attempts, start, duration, error); cancel (change_workflowrun). Error texts are shown as
    the worker scrubbed them, escaped by the templates."""

    @_unavailable_on_nats_errors
    def changelist(self, request: HttpRequest) -> HttpResponse:
        """The newest WORKFLOW_RUNS_SHOWN runs, newest first; `?run=ID` opens a run."""
        self.require(self.model_admin.has_view_permission(request))
        wanted = request.GET.get("run", "").strip()
        if wanted and _RUN_ID.fullmatch(wanted):
            return HttpResponseRedirect(self.url("change", wanted))
        if wanted:
            return self._gone(request, wanted)
        rows, error = [], None
        try:
            for status in list_runs(interactive_client(), WORKFLOW_RUNS_SHOWN):
                counts = sorted(status.counts().items(), key=lambda item: str(item[0]))
                rows.append({"status": status, "counts": counts, "url": self._detail_url(status.id)})
        except bgjob.BgjobError:
            raise
        except _MALFORMED as exc:
            log.warning("admin: a stored workflow run cannot be read: %r", exc)
            rows, error = [], f"A stored workflow run is malformed, so the list cannot be read ({type(exc).__name__})."
        context = self.context(request, title="Workflow runs", subtitle=None, rows=rows, read_error=error,
                               shown=WORKFLOW_RUNS_SHOWN, time_zone=timezone.get_current_timezone_name())  # fmt: skip
        return TemplateResponse(request, "bgjob_django/admin/workflowrun_list.html", context)

    @_unavailable_on_nats_errors
    def detail(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self.require(self.model_admin.has_view_permission(request))
        if not _RUN_ID.fullmatch(object_id):
            return self._gone(request, object_id)
        try:
            status = bgjob.WorkflowRun(interactive_client(), object_id).status()
            counts = sorted(status.counts().items(), key=lambda item: str(item[0]))
        except bgjob.WorkflowNotFound:
            return self._gone(request, object_id)
        except bgjob.BgjobError:
            raise
        except _MALFORMED as exc:
            log.warning("admin: workflow run %s cannot be read: %r", object_id, exc)
            messages.error(request, f"Workflow run {object_id} cannot be shown: its stored record is malformed.")
            return HttpResponseRedirect(self.url("changelist"))
        can_see_dlq = request.user.has_perm(f"{self.opts.app_label}.view_deadletter")
        steps = [{"step": step, "dlq_url": self._dead_letter_url(step.job_id) if can_see_dlq else None}
                 for step in status.steps.values()]  # fmt: skip
        context = self.context(
            request,
            title=f"Workflow run {status.id}",
            subtitle=None,
            here=status.id,
            object=WorkflowRun(id=status.id),
            status=status,
            steps=steps,
            counts=counts,
            time_zone=timezone.get_current_timezone_name(),
            can_cancel=status.state == "running" and self.model_admin.has_change_permission(request),
            changelist_url=self.url("changelist"),
        )
        return TemplateResponse(request, "bgjob_django/admin/workflowrun_detail.html", context)

    @_unavailable_on_nats_errors
    def cancel(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: cancel the run (no step that has not started will start). GET: back to the run's page."""
        self.require(self.model_admin.has_change_permission(request))
        if not _RUN_ID.fullmatch(object_id):
            return self._gone(request, object_id)
        if request.method != "POST":
            return HttpResponseRedirect(self.url("change", object_id))
        try:
            cancelled = bgjob.WorkflowRun(interactive_client(), object_id).cancel()
        except bgjob.WorkflowNotFound:
            return self._gone(request, object_id)
        except bgjob.BgjobError:
            raise
        except _MALFORMED as exc:
            log.warning("admin: workflow run %s cannot be read: %r", object_id, exc)
            messages.error(request, f"Workflow run {object_id} was not cancelled: its stored record is malformed.")
            return HttpResponseRedirect(self.url("changelist"))
        if cancelled:
            LogEntry.objects.log_actions(user_id=_user_id(request), queryset=[WorkflowRun(id=object_id)],
                                         action_flag=CHANGE, change_message="Cancelled.")  # fmt: skip
            messages.success(request, f"Workflow run {object_id} was cancelled: no step that has not started will "
                                      "start.")  # fmt: skip
        else:
            messages.warning(request, f"Workflow run {object_id} had already finished or been cancelled.")
        return HttpResponseRedirect(self.url("change", object_id))

    def _detail_url(self, run_id: str) -> str | None:
        try:
            return self.url("change", run_id)
        except NoReverseMatch:
            return None

    def _dead_letter_url(self, job_id: str) -> str | None:
        try:
            return reverse(f"admin:{self.opts.app_label}_deadletter_change", args=[job_id],
                           current_app=self.model_admin.admin_site.name)  # fmt: skip
        except NoReverseMatch:
            return None

    def _gone(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        """Back to the list, saying so: what the admin does for an object that does not exist."""
        messages.warning(request, f"There is no workflow run with id “{object_id[:200]}”: it is older than its "
                                  "records' retention, or the id is wrong.")  # fmt: skip
        return HttpResponseRedirect(self.url("changelist"))


def _outbox() -> dict[str, Any]:
    """The outbox backlog for the overview (`outbox`), or why it cannot be read (`outbox_error`)."""
    try:
        return {"outbox": backlog(), "outbox_error": None}
    except DatabaseError as exc:
        log.warning("admin: the outbox table cannot be read: %s", exc)
        return {"outbox": None, "outbox_error": f"{type(exc).__name__}: {str(exc).strip()}"}


def _find_job(client: bgjob.Client, job_id: str, *, unmasked: bool = False) -> dict[str, Any]:
    """The overview's "Find a job by id" box: `job_query`, and for a query the job's `job_status`, its latest
    `job_progress` (display.job_progress: masked unless `unmasked`, the view_deadletter_payload permission, as a
    dead letter's arg is) and its `job_events` (bgjob.events; error texts as scrubbed by the worker, escaped by
    the template), or `job_error`."""
    if not job_id:
        return {"job_query": "", "events_on": client.settings.events}
    try:
        status = client.job_status(job_id)
    except bgjob.InvalidJob as exc:
        return {"job_query": job_id, "job_error": str(exc), "events_on": client.settings.events}
    found = list(client.events(job_id=job_id, follow=False)) if status.event is not None else []
    sensitive = registry.sensitive_keys(status.event.job_type) if status.event is not None else frozenset()
    return {"job_query": job_id, "job_status": status, "job_events": found, "events_on": client.settings.events,
            "job_progress": job_progress(status, masked=not unmasked, sensitive=sensitive)}  # fmt: skip


class _DlqFilter(TypedDict):
    """The filter keywords of client.dlq's list, count, find and erase."""

    queue: str | None
    job_type: str | None
    reason: str | None


def _user_id(request: HttpRequest) -> int:
    """The id of the admin's user: these views are served only to logged-in staff (admin_view)."""
    pk = request.user.pk
    assert pk is not None
    return pk


def _api(filters: dict[str, str]) -> _DlqFilter:
    return {"queue": filters["queue"] or None, "job_type": filters["type"] or None, "reason": filters["reason"] or None}


def _valid_filter(key: str, value: str) -> bool:
    validate = {"queue": jobmod.validate_queue, "type": jobmod.validate_type, "reason": validate_reason}[key]
    try:
        validate(value)
    except bgjob.InvalidJob:
        return False
    return True


def _describe(filters: dict[str, str]) -> str:
    parts = [f"{what} {filters[key]}" for key, what in FILTERS if filters[key]]
    return ", ".join(parts) if parts else "all queues, types and reasons"


def _blank_choice() -> list[tuple[str, str]]:
    """The action menu's empty choice as this Django version labels it ("- Select an option -" from 6.1)."""
    try:
        from django.db.models.utils import get_blank_choice_label
    except ImportError:  # Django < 6.1
        return list(BLANK_CHOICE_DASH)
    return [("", get_blank_choice_label())]


def _positive_int(text: str | None) -> int | None:
    """A DLQ sequence from a query or form value (ASCII digits, 1 to MAX_SEQ); None for anything else."""
    if not text or len(text) > 20 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value <= MAX_SEQ else None


def _query(filters: dict[str, str]) -> str:
    """The filters as a query string for a redirect or a link: "" when none (no stray "?")."""
    clean = {k: v for k, v in filters.items() if v}
    return "?" + urlencode(clean) if clean else ""


def _content_type_id(model: type) -> int:
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_for_model(model, for_concrete_model=False).id


def _qs(params: dict[str, Any]) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(clean) if clean else "?"
