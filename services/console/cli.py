"""``skuforge console ...``: the Label Studio hand-off, beside the web console, and password hashes.

* ``export-labelstudio --out tasks.json``  pending items as Label Studio tasks (predicted mask as an
  RLE brush pre-annotation); ``--config-out`` writes a matching labeling config.
* ``import-labelstudio export.json``       Label Studio's JSON export back as decisions, published
  to ``correction.resolved`` (``--no-publish`` leaves them in the outbox for the console's relay).

* ``refused``                             the decisions the broker refused for good, set aside by
  the relay; ``resend TASK_ID... | --all`` gives them back to it (raise max.message.bytes first);
  ``discard TASK_ID...`` drops one that no longer reads, which no resend would send.

* ``hash-password``                       a reviewer's password as its scrypt hash, for
  ``SKUFORGE_CONSOLE_USERS`` (``name:scrypt:...``), so the Secret holds no password.

The Label Studio commands use the console's task table (``SKUFORGE_CONSOLE_DB_PATH``) and the object
store. An item that cannot be exported or imported is skipped with its reason and the rest go on; the
exit status is 1 when anything was skipped that a user would miss (each command's ``--help`` says
what counts), 2 when nothing could be read or written.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import secrets
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from services.console.config import ConsoleSettings
from services.console.labelstudio import (
    LABEL_CONFIG,
    MASKS_AGREE_IOU,
    ImportOutcome,
    check_image_url,
    export_tasks,
    import_annotations,
    read_export,
)
from services.console.relay import DecisionRelay
from services.console.security import MAX_PASSWORD_CHARS, hash_password
from services.console.tasks import (
    OutboxEvent,
    TaskConflict,
    TaskFilter,
    TaskNotFound,
    TaskStore,
    UnreadableDecision,
)
from shared.argtypes import CommandParser, float_between, path_argument
from shared.config import UP_CONSOLE_DB, UP_STACK_STATE, UP_STORE, UP_WORKDIR, load_settings
from shared.errors import TransientError
from shared.observability import escape_control_characters
from shared.store import open_settings_store

EXPORT_EXIT_STATUS = (
    "exit status: 0 every matching item exported; 1 some were skipped (each listed on stderr with "
    "its reason; the file holds the others); 2 nothing written"
)
IMPORT_EXIT_STATUS = (
    "exit status: 0 every annotation recorded (tasks nobody annotated are listed, not counted); 1 some "
    "annotations were skipped (each listed with its reason, annotators who disagree included: one "
    "approving and one rejecting, or approved masks that overlap at an IoU below --agree-iou; "
    "the others are recorded, and running the same export again is safe: decided tasks are skipped); 2 "
    "the export or the table could not be read"
)

RESEND_EXIT_STATUS = (
    "exit status: 0 every named decision given back; 1 some were not (each listed on stderr with its "
    "reason: no such task, no decision, not refused, no longer reads; the others were given back); 2 "
    "the table could not be read"
)
DISCARD_EXIT_STATUS = (
    "exit status: 0 every named decision discarded; 1 some were not (each listed on stderr with its "
    "reason: no such task, no decision, discarded already, published, still reads; the others were "
    "discarded); 2 the table could not be read"
)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``skuforge console <action>``."""
    parser = CommandParser(
        prog="skuforge console",
        description="Label Studio hand-off, refused decisions, and reviewers' password hashes.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    export = sub.add_parser(
        "export-labelstudio", help="write pending items as Label Studio tasks", epilog=EXPORT_EXIT_STATUS
    )
    export.add_argument("--out", type=path_argument("file"), required=True, help="tasks JSON file to write")
    export.add_argument(
        "--config-out",
        type=path_argument("file"),
        help="also write a matching labeling config (XML); both files are written, or neither",
    )
    export.add_argument(
        "--image-url",
        default="{uri}",
        help="URL template of the image Label Studio loads: {uri}, {key}, {sku_id}, {item_id} "
        "(default: the object-store URI)",
    )
    export.add_argument("--sku", help="only this SKU")
    export.add_argument("--reason", help="only items flagged with this reason (e.g. iou_below_threshold)")
    imp = sub.add_parser(
        "import-labelstudio", help="turn a Label Studio JSON export into decisions", epilog=IMPORT_EXIT_STATUS
    )
    imp.add_argument(
        "export", type=path_argument("file"), help="Label Studio's JSON export (a list of tasks; UTF-8)"
    )
    imp.add_argument(
        "--no-publish", action="store_true", help="record only; the console's relay publishes them later"
    )
    imp.add_argument(
        "--agree-iou",
        type=float_between(0.0, 1.0),
        default=MASKS_AGREE_IOU,
        metavar="IOU",
        help="annotators who approve masks overlapping at an IoU below this (0 to 1) disagree, and the "
        f"task is skipped for someone to settle (default {MASKS_AGREE_IOU:.2f}, the gate's default iou_min)",
    )
    sub.add_parser(
        "refused",
        help="list the decisions the broker refused for good (one JSON line each: task, SKU, decision, "
        "the broker's reason; one that no longer reads with 'unreadable', why, in place of its decision), "
        "which the relay has set aside",
    )
    resend_help = (
        "give refused decisions back to the console's relay, which sends them at its next round "
        "(raise the topic's max.message.bytes first, or the broker refuses them again)"
    )
    resend = sub.add_parser("resend", help=resend_help, description=resend_help, epilog=RESEND_EXIT_STATUS)
    which = resend.add_mutually_exclusive_group(required=True)
    which.add_argument("task_ids", nargs="*", default=[], metavar="TASK_ID", help="the tasks to resend")
    which.add_argument("--all", action="store_true", help="every refused decision")
    discard_help = (
        "drop unsent decisions that no longer read (listed by 'refused' with 'unreadable') from the "
        "outbox, for good: the task stays as decided, in the audit, but its decision never reaches the "
        "retraining store; a decision that reads is resent or left, never discarded"
    )
    discard = sub.add_parser(
        "discard", help=discard_help, description=discard_help, epilog=DISCARD_EXIT_STATUS
    )
    discard.add_argument("task_ids", nargs="+", metavar="TASK_ID", help="the tasks whose decision to drop")
    sub.add_parser(
        "hash-password",
        help="read a password (prompted on a terminal, else the first line of stdin; UTF-8) and print its "
        "scrypt hash, to write as name:HASH in SKUFORGE_CONSOLE_USERS instead of the password",
    )
    args = parser.parse_args(argv)
    if args.action == "hash-password":
        return _hash_password()
    if args.action == "export-labelstudio":
        try:
            check_image_url(args.image_url)
        except ValueError as exc:
            export.error(f"--image-url: {exc}")  # exits with status 2, before anything is opened
        if args.config_out and args.config_out.resolve() == args.out.resolve():
            export.error(f"--config-out {args.config_out}: the same file as --out; name another")

    settings = load_settings()
    console = load_settings(ConsoleSettings)
    where = Path(console.console_db_path)
    if not where.is_file():
        # A mistyped path would otherwise create a new, empty table: nothing exported, every
        # annotation "not found", and exit 0.
        print(
            f"skuforge console {args.action}: no task table at {where}; set SKUFORGE_CONSOLE_DB_PATH "
            f"to the console's (skuforge serve console creates it){_up_stack_hint(args.action, where)}",
            file=sys.stderr,
        )
        return 2
    if where.stat().st_size == 0:
        # SQLite would quietly make an empty file into a new, empty table.
        print(f"skuforge console {args.action}: {where} is empty, not a task table", file=sys.stderr)
        return 2
    try:
        tasks = TaskStore(where)
    except TransientError as exc:
        print(f"skuforge console {args.action}: {exc}", file=sys.stderr)
        return 2
    if args.action == "refused":
        for event in tasks.refused():
            print(json.dumps(_refused_line(event)))
        return 0
    if args.action == "resend":
        return _resend(tasks, [event.task_id for event in tasks.refused()] if args.all else args.task_ids)
    if args.action == "discard":
        return _discard(tasks, args.task_ids)
    store = open_settings_store(settings)

    if args.action == "export-labelstudio":
        if args.sku is not None and not tasks.has_sku(args.sku):
            print(
                f"skuforge console export-labelstudio: --sku {args.sku}: no task of that SKU in {where}",
                file=sys.stderr,
            )
            return 2
        if args.reason is not None and args.reason not in (known := tasks.reasons()):
            # A mistyped reason exported nothing and exited 0, as a mistyped --sku did before.
            print(
                f"skuforge console export-labelstudio: --reason {args.reason}: no task in {where} was "
                f"flagged with it (flagged: {', '.join(known) or 'none'})",
                file=sys.stderr,
            )
            return 2
        exported = export_tasks(
            tasks, store, filters=TaskFilter(sku_id=args.sku, reason=args.reason), image_url=args.image_url
        )
        files = {args.out: json.dumps(exported.tasks)}
        if args.config_out:
            files[args.config_out] = LABEL_CONFIG
        try:
            _write_all(files)
        except OSError as exc:
            print(f"skuforge console export-labelstudio: cannot write {exc.strerror or exc}", file=sys.stderr)
            return 2
        for skip in exported.skipped:
            print(f"skipped {skip.task_id}: {escape_control_characters(skip.detail)}", file=sys.stderr)
        summary = {"exported": len(exported.tasks), "skipped": len(exported.skipped), "out": str(args.out)}
        print(json.dumps(summary))
        if exported.skipped:
            print(
                f"skuforge console export-labelstudio: {len(exported.skipped)} item(s) skipped (reasons "
                "above); fix them and export again, or review them in the web console",
                file=sys.stderr,
            )
            return 1
        return 0

    try:
        export_data = read_export(args.export.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"skuforge console import-labelstudio: cannot read {args.export}: {exc}", file=sys.stderr)
        return 2
    outcomes = import_annotations(
        tasks, store, export_data, lease_s=console.console_lease_s, agree_iou=args.agree_iou
    )
    published = 0
    if not args.no_publish:
        relay = DecisionRelay(tasks, settings)
        try:
            published = relay.publish_pending()
        except TransientError as exc:
            print(f"recorded, not yet published ({exc}); the console's relay will", file=sys.stderr)
        finally:
            relay.close()
    for outcome in outcomes:
        print(json.dumps(outcome.__dict__))
    lost = [outcome for outcome in outcomes if outcome.annotation_lost]
    print(json.dumps(_import_summary(outcomes, lost, published)))
    if lost:
        print(
            f"skuforge console import-labelstudio: {len(lost)} annotation(s) skipped, not recorded (reasons "
            "above); fix what they name and import again (decided tasks are skipped)",
            file=sys.stderr,
        )
        return 1
    return 0


def _up_stack_hint(action: str, where: Path) -> str:
    """The variables that point ``action`` at the table of the local stack (``skuforge up``, ``make up``,
    ``make demo``) when there is one in this folder's default workdir (``var/up``) and it is not ``where``;
    with none there, where a stack of another ``--workdir`` keeps its table; else "".

    After the demo, the refusal named only the default ``var/console/``, not where the stack keeps its
    table; and the Label Studio commands also need the stack's store, or every item was skipped as
    "not inside this store". The paths are those the stack's ``stack.json`` names where it names them: a
    stack started with SKUFORGE_CONSOLE_DB_PATH or SKUFORGE_STORE_URI of its own keeps them there, and the
    hint named the defaults (or, its table not there, nothing)."""
    table_path, store_uri = _up_stack_paths()
    table = Path(table_path)
    try:
        found = table.is_file()
        if found and table.resolve() == where.resolve():
            return ""
    except OSError:  # a path the system refuses (too long, a folder we may not enter): no table there
        return ""
    if not found:
        # Only the default workdir can be looked in: a stack started elsewhere exports nothing to this
        # shell, and the refusal said nothing of it.
        return f"; a stack of `skuforge up --workdir DIR` keeps its table at DIR/{UP_CONSOLE_DB.as_posix()}"
    # Quoted for the shell they are typed into, and escaped: stack.json is a file anyone may edit.
    variables = f"SKUFORGE_CONSOLE_DB_PATH={shlex.quote(table_path)}"
    if action in ("export-labelstudio", "import-labelstudio"):
        variables += f" SKUFORGE_STORE_URI={shlex.quote(store_uri)}"
    return escape_control_characters(
        f"; `skuforge up` in {UP_WORKDIR} (its default --workdir; make up, make demo) keeps its table at "
        f"{table_path}: {variables}"
    )


def _up_stack_paths() -> tuple[str, str]:
    """(task table path, store URI) of the local stack in this folder: its ``stack.json``'s
    ``console_db`` and ``store_uri`` where it names them as text, else the defaults ``skuforge up`` uses."""
    table, store = str(UP_WORKDIR / UP_CONSOLE_DB), f"file://{UP_WORKDIR / UP_STORE}"
    try:
        state = json.loads((UP_WORKDIR / UP_STACK_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # none (a stack never started), or damaged: the defaults
        # RecursionError: json.loads' refusal of nesting deeper than Python's stack, no ValueError.
        return table, store
    if not isinstance(state, dict):
        return table, store
    console_db, store_uri = state.get("console_db"), state.get("store_uri")
    return (
        console_db if isinstance(console_db, str) and console_db else table,
        store_uri if isinstance(store_uri, str) and store_uri else store,
    )


def _write_all(files: dict[Path, str]) -> None:
    """Write every file or none (exit 2 says nothing was written): each to a temporary beside it, then
    all renamed into place. Before, the config was written first and stayed when --out then failed."""
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"{path}: is a folder; name the file to write")
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            # A short name of its own, not the file's name with a suffix: beside an --out near the
            # folder's 255-byte name limit, ".<name>.<pid>.partial" was past it ("File name too long").
            partial = path.with_name(f".skuforge-export.{os.getpid()}.{secrets.token_hex(4)}.partial")
            staged.append((partial, path))
            try:
                partial.write_text(text)
            except OSError as exc:
                # Named as asked: the error named the temporary (".tasks.json.<pid>.partial").
                raise _named(path, exc) from exc
        for partial, path in staged:
            try:
                partial.replace(path)
            except OSError as exc:  # said only "cannot write Operation not permitted", naming no file
                raise _named(path, exc) from exc
    finally:
        for partial, _ in staged:
            try:
                partial.unlink(missing_ok=True)
            except OSError as exc:
                # Raised here, it replaced the error that stopped the export ("cannot write Permission
                # denied", naming no file): that one is kept, and the file left behind is named.
                print(
                    f"skuforge console export-labelstudio: warning: could not remove the temporary "
                    f"{partial}: {exc.strerror or exc}",
                    file=sys.stderr,
                )


def _named(path: Path, exc: OSError) -> OSError:
    """``exc`` naming ``path``, the file asked for, not the temporary written beside it."""
    return OSError(exc.errno, f"{path}: {exc.strerror or exc}")


def _import_summary(
    outcomes: list[ImportOutcome], lost: list[ImportOutcome], published: int
) -> dict[str, int]:
    return {
        "decided": sum(o.outcome != "skipped" for o in outcomes),
        "skipped": len(lost),
        "not_annotated": sum(o.outcome == "skipped" for o in outcomes) - len(lost),
        "published": published,
    }


def _refused_line(event: OutboxEvent | UnreadableDecision) -> dict[str, object]:
    if isinstance(event, UnreadableDecision):
        return {
            "task_id": event.task_id,
            "sku_id": event.sku_id,
            "refused_reason": event.refused_reason,
            "unreadable": event.error,
        }
    return {
        "task_id": event.task_id,
        "sku_id": event.sku_id,
        "decision": event.payload.decision,
        "decided_at": event.created_at,
        "refused_reason": event.refused_reason,
    }


def _resend(tasks: TaskStore, task_ids: list[str]) -> int:
    """``skuforge console resend``: each refused decision back in the relay's queue, each one that is
    not (no such task, no decision, not refused, no longer reads) listed with its reason."""
    return _each_decision(tasks.resend, task_ids, "resend", ("was_refused", "resent", "not_resent"))


def _discard(tasks: TaskStore, task_ids: list[str]) -> int:
    """``skuforge console discard``: each unreadable decision dropped from the outbox, each one that is
    not (no such task, no decision, published, still reads) listed with its reason."""
    return _each_decision(
        tasks.discard_unreadable, task_ids, "discard", ("was_unreadable", "discarded", "not_discarded")
    )


def _each_decision(
    act: Callable[[str], str], task_ids: list[str], command: str, names: tuple[str, str, str]
) -> int:
    """``act`` on each task's decision: a JSON line per one it took (``names[0]``: what ``act`` returned),
    the reason on stderr for each it did not, and the counts of both (``names[1]``, ``names[2]``).

    A task named twice is acted on once: its second naming found the decision resent already ("was not
    refused: it waits to be sent"), and the command exited 1 for a decision it had resent."""
    said, done, not_done = names
    task_ids = list(dict.fromkeys(task_ids))
    failed = 0
    for task_id in task_ids:
        try:
            answer = act(task_id)
        except TaskNotFound:
            print(f"skuforge console {command}: {task_id}: no such task", file=sys.stderr)
            failed += 1
            continue
        except TaskConflict as exc:
            print(f"skuforge console {command}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({"task_id": task_id, said: answer}))
    print(json.dumps({done: len(task_ids) - failed, not_done: failed}))
    return 1 if failed else 0


def _first_line_of_stdin() -> str:
    """The first line piped in, read as UTF-8 (the login form sends the password so) whatever the
    locale: under a Latin-1 locale, stdin read "café" sent as UTF-8 as "cafÃ©", and the hash of that
    never matched the login form's password. A stream without bytes under it is read as text."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        return sys.stdin.readline()
    line: bytes = raw.readline()
    return line.decode("utf-8")  # UnicodeDecodeError: refused by the caller, as not UTF-8


def _hash_password() -> int:
    """``skuforge console hash-password``: the password's ``scrypt:`` entry on stdout."""
    try:
        if sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                print("skuforge console hash-password: the two passwords differ", file=sys.stderr)
                return 2
        else:
            password = _first_line_of_stdin().removesuffix("\n").removesuffix("\r")
        password.encode("utf-8")  # stdin read with surrogateescape keeps bad bytes as lone surrogates
    except UnicodeError:
        # A password in another encoding (Latin-1) was a traceback; the login form sends UTF-8 only.
        print("skuforge console hash-password: the password is not valid UTF-8 text", file=sys.stderr)
        return 2
    if not password:
        print("skuforge console hash-password: empty password", file=sys.stderr)
        return 2
    if len(password) > MAX_PASSWORD_CHARS:
        # Its hash would verify, but the login form never takes the password it was made from.
        print(
            f"skuforge console hash-password: the password is {len(password)} characters; the login "
            f"form takes at most {MAX_PASSWORD_CHARS}",
            file=sys.stderr,
        )
        return 2
    print(hash_password(password))
    return 0
