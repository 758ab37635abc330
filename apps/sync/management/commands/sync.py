"""The one command for sync: keys, nodes, status, apply, retry, push, pull, files."""

import argparse
import gc
import logging
import sys
import time

from django.conf import settings
from django.core.checks import Tags
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections, transaction

from sync import keys
from sync.apply import apply_pending, retry
from sync.models import Conflict, IncomingStatus, IncomingTransaction, Node
from sync.status import node_status, problems
from sync.tokens import hash_token, new_token

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Synchronise this node: keys, registered nodes, status, apply, push."
    # The checks that sync's own work depends on (the registered models).
    # The others (URLs, admin) import every view, which is a quarter of a
    # second on each run; ``manage.py check`` runs them all.
    requires_system_checks = [Tags.models]

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)

        keygen = sub.add_parser("keygen", help="create this node's signing key")
        keygen.add_argument(
            "--data-key",
            action="store_true",
            help="also create a new deployment data key and make it active",
        )
        sub.add_parser("identity", help="print this node's id, role and public key")

        node = sub.add_parser("node", help="manage the nodes allowed to deliver here")
        node_sub = node.add_subparsers(dest="node_action", required=True)
        add = node_sub.add_parser("add", help="register a node (prints its token)")
        add.add_argument("node_id")
        add.add_argument("--role", required=True, choices=Node.Role.values)
        add.add_argument("--public-key", required=True)
        add.add_argument("--relay", action="store_true", help="may relay for others")
        add.add_argument(
            "--token", help="use this credential instead of making a new one"
        )
        add.add_argument(
            "--no-token", action="store_true", help="known key, cannot deliver"
        )
        node_sub.add_parser("list", help="list registered nodes")
        revoke = node_sub.add_parser("revoke", help="stop a node from delivering")
        revoke.add_argument("node_id")

        sub.add_parser("status", help="print this node's sync status")
        sub.add_parser("problems", help="list parked, failed, rejected and conflicts")
        apply = sub.add_parser("apply", help="apply received transactions")
        apply.add_argument("--chunks", type=int, default=None)
        apply.add_argument(
            "--watch",
            action="store_true",
            help="keep applying what arrives (the server's apply worker)",
        )
        apply.add_argument(
            "--interval", type=float, default=5.0, help="seconds between passes"
        )
        retry_parser = sub.add_parser("retry", help="apply failed transactions again")
        retry_parser.add_argument("--parked", action="store_true")
        reapply = sub.add_parser("reapply-conflict", help="make a losing version win")
        reapply.add_argument("conflict_id")

        for name in ("push", "pull", "export", "import"):
            handler = getattr(self, f"add_{name}_arguments", None)
            parser_ = sub.add_parser(name, help=f"{name} transactions")
            if handler:
                handler(parser_)
        self.add_file_parsers(sub)

    def add_pull_arguments(self, parser):
        parser.add_argument("urls", nargs="+", help="field laptops to pull from")
        parser.add_argument("--chunk-size", type=int, default=None)

    def add_push_arguments(self, parser):
        parser.add_argument(
            "--watch", action="store_true", help="keep pushing on an interval"
        )
        parser.add_argument("--interval", type=float, default=None)
        parser.add_argument("--chunk-size", type=int, default=None)

    def handle(self, *args, action, **options):
        handler = getattr(self, f"do_{action.replace('-', '_')}", None)
        if handler is None:
            raise CommandError(f"'sync {action}' is not available on this node yet.")
        return handler(**options)

    # -- keys and nodes --------------------------------------------------------

    def do_keygen(self, data_key=False, **options):
        made = keys.create_signing_key(settings.SYNC_SIGNING_KEY_FILE)
        state = "created" if made else "kept the existing"
        self.stdout.write(f"{state} signing key {settings.SYNC_SIGNING_KEY_FILE}")
        if data_key:
            key_id = keys.create_data_key(settings.SYNC_DATA_KEYS_DIR)
            self.stdout.write(
                f"created data key {key_id} in {settings.SYNC_DATA_KEYS_DIR}; copy "
                "that folder to every node of the deployment"
            )
        keys.forget_cached_keys()
        self.do_identity()

    def do_identity(self, **options):
        self.stdout.write(
            f"node {settings.NODE_ID} role {settings.ROLE} "
            f"public-key {keys.public_key_text()}"
        )

    def do_node(self, node_action, **options):
        if node_action == "list":
            if not Node.objects.exists():
                self.stdout.write("no nodes registered here (add one: sync node add)")
            for node in Node.objects.order_by("node_id"):
                flags = ["active" if node.is_active else "REVOKED"]
                if node.can_relay:
                    flags.append("relay")
                self.stdout.write(
                    f"{node.node_id:24} {node.role:10} {' '.join(flags):14} "
                    f"{node.public_key}"
                )
            return
        if node_action == "revoke":
            revoked = Node.objects.filter(node_id=options["node_id"]).update(
                is_active=False
            )
            if not revoked:
                raise CommandError(f"no node {options['node_id']} is registered")
            self.stdout.write(f"revoked {options['node_id']}")
            return
        try:
            keys.public_key_from_text(options["public_key"])
        except ValueError as exc:
            raise CommandError(f"--public-key is not an Ed25519 key: {exc}") from exc
        token = "" if options["no_token"] else (options["token"] or new_token())
        with transaction.atomic():
            Node.objects.update_or_create(
                node_id=options["node_id"],
                defaults={
                    "role": options["role"],
                    "public_key": options["public_key"],
                    "token_hash": hash_token(token) if token else "",
                    "can_relay": options["relay"],
                    "is_active": True,
                },
            )
        self.stdout.write(f"registered {options['node_id']} ({options['role']})")
        if token and not options["token"]:
            self.stdout.write(f"token {token}")

    # -- status ----------------------------------------------------------------

    def do_status(self, **options):
        status = node_status()
        write = self.stdout.write
        write(f"node {status['node']} ({status['role']})")
        write(f"upstream {status['upstream'] or '-'}")
        write(
            f"outgoing {status['outgoing_total']} made here, "
            f"{status['outgoing_pending']} not yet acknowledged upstream"
        )
        for ack in status["acknowledgements"]:
            write(
                f"  {ack.holder} holds {ack.producer} through #{ack.through_sequence} "
                f"(as of {ack.updated:%Y-%m-%d %H:%M})"
            )
        if status["last_push"]:
            write(f"last successful push {status['last_push']:%Y-%m-%d %H:%M:%S}")
        write("incoming per producer:")
        for row in status["producers"]:
            write(
                f"  {row['producer']:24} held #{row['contiguous']} "
                f"(highest #{row['highest']}, {row['gaps']} missing) "
                f"applied {row['applied']} parked {row['parked']} "
                f"failed {row['failed']} conflicts {row['conflicts']}"
            )
        write(
            f"rejected envelopes {status['rejected']}, "
            f"open conflicts {status['open_conflicts']}"
        )
        files = status["batch_files"]
        write(
            f"batch files: exported through #{files['exported_last']} "
            f"({files['exported_unreceipted']} without receipt), "
            f"imported {files['imported']}, waiting {files['waiting']}, "
            f"quarantined {files['quarantined']}"
        )
        for row in files["sites"]:
            waiting = ", ".join(f"#{n}" for n in row["waiting"])
            write(
                f"  {row['site']}: batches imported through #{row['last']}"
                + (
                    f", waiting {waiting} (a batch before them is missing)"
                    if waiting
                    else ""
                )
            )

    def do_problems(self, **options):
        found = problems()
        for row in found["incoming"]:
            where = f" waiting for {row.waiting_for}" if row.waiting_for else ""
            self.stdout.write(
                f"{row.status:8} {row.producer}#{row.sequence} {row.action} "
                f"{row.model} {row.record_id}{where}: {row.detail}"
            )
        for row in found["rejected"]:
            self.stdout.write(
                f"rejected {row.producer}#{row.sequence} from {row.delivered_by} "
                f"[{row.code}]: {row.detail}"
            )
        for conflict in found["conflicts"]:
            self.stdout.write(
                f"conflict {conflict.id} {conflict.model} {conflict.record_id}: "
                f"{conflict.get_kind_display()}; kept {conflict.loser_producer}'s "
                f"{conflict.loser_action}, {conflict.winner_producer}'s won"
            )
        for batch in found["waiting_batches"]:
            self.stdout.write(
                f"waiting  batch {batch.number} of {batch.site} "
                f"({batch.file_name}): {batch.detail}"
            )
        for item in found["quarantined"]:
            self.stdout.write(
                f"quarantined {item.file_name} [{item.code}] {item.detail} "
                f"-> {item.moved_to}"
            )
        if not any(found.values()):
            self.stdout.write("no problems")

    # -- applying --------------------------------------------------------------

    def do_apply(self, chunks=None, watch=False, interval=5.0, **options):
        if not watch:
            self.stdout.write(str(apply_pending(max_chunks=chunks)))
            return
        # What a delivery stored but did not apply (the server was killed, or
        # the apply after a push failed) is taken up here, whoever sends next.
        log.info("apply worker: every %.0f s", interval)
        while True:
            try:
                report = apply_pending(max_chunks=chunks)
            except DatabaseError:
                log.exception("apply worker: pass failed; trying again")
                connections.close_all()
                report = None
            busy = report and (
                report.applied or report.parked or report.failed or report.conflicts
            )
            if not busy:
                gc.collect()  # rare while busy (config.gc_tuning): now is the time
                time.sleep(interval)

    def do_retry(self, parked=False, **options):
        statuses = [IncomingStatus.FAILED] + ([IncomingStatus.PARKED] if parked else [])
        rows = list(IncomingTransaction.objects.filter(status__in=statuses))
        if not rows:
            self.stdout.write("nothing to retry")
            return
        self.stdout.write(str(retry(rows)))

    def do_reapply_conflict(self, conflict_id, **options):
        from sync.resolve import reapply_loser

        try:
            conflict = Conflict.objects.get(pk=conflict_id)
        except (Conflict.DoesNotExist, ValueError, ValidationError):
            raise CommandError(
                f"no conflict {conflict_id}; `sync problems` lists the open ones"
            ) from None
        reapply_loser(conflict, by="command line")
        self.stdout.write(f"re-applied the losing version of {conflict.record_id}")

    # -- transport ---------------------------------------------------------------

    def do_pull(self, urls, chunk_size=None, **options):
        from sync.transport.client import PushFailed, pull

        failed = []
        for url in urls:
            try:
                summary = pull(url, chunk_size=chunk_size, progress=sys.stderr.isatty())
                self.stdout.write(str(summary))
            except PushFailed as exc:
                failed.append(f"{url}: {exc}")
        if failed:
            raise CommandError("; ".join(failed))

    def do_push(self, watch=False, interval=None, chunk_size=None, **options):
        from sync.transport.client import PushFailed, push, push_forever

        try:
            if watch:
                push_forever(interval or settings.SYNC_PUSH_INTERVAL, chunk_size)
            else:
                summary = push(chunk_size=chunk_size, progress=sys.stderr.isatty())
                self.stdout.write(str(summary))
        except PushFailed as exc:
            raise CommandError(str(exc)) from exc

    # -- batch files between a site and central ----------------------------------

    def add_export_arguments(self, parser):
        parser.add_argument("--to", help="write the batches here, not to the outbox")
        parser.add_argument(
            "--from-acknowledged",
            action="store_true",
            help="export everything central has not acknowledged (after a lost drive)",
        )
        parser.add_argument("--max-envelopes", type=int, default=None)

    def add_import_arguments(self, parser):
        parser.add_argument("directory", nargs="?", help="default: SYNC_INBOX_DIR")
        parser.add_argument("--receipts", help="write receipts here")
        parser.add_argument(
            "--sites",
            action="store_true",
            help="the directory (default: SYNC_SITES_DIR) holds one drop per site",
        )
        parser.add_argument("--watch", action="store_true", help="keep importing")
        parser.add_argument("--interval", type=float, default=None)
        parser.add_argument("--loops", type=int, default=None, help=argparse.SUPPRESS)

    def add_file_parsers(self, sub):
        for name, text in (
            ("send", "copy the outbox's batch files to central"),
            ("fetch-receipts", "fetch central's receipts and import them"),
        ):
            parser = sub.add_parser(name, help=text)
            where = parser.add_mutually_exclusive_group(required=True)
            where.add_argument("--folder", help="a drive or folder (inbox/, receipts/)")
            where.add_argument(
                "--sftp", action="store_true", help="SYNC_SFTP_* settings"
            )
            if name == "send":
                parser.add_argument(
                    "--resend",
                    action="store_true",
                    help="also send batches sent before and not receipted yet",
                )
        receipts = sub.add_parser("import-receipts", help="import central's receipts")
        receipts.add_argument("directory", nargs="?", help="default: SYNC_RECEIPTS_DIR")

    def do_export(self, to=None, from_acknowledged=False, max_envelopes=None, **o):
        from sync.transport.files import export

        self.stdout.write(str(export(to, from_acknowledged, max_envelopes)))

    def do_import(self, directory=None, receipts=None, watch=False, **options):
        from sync.transport.files import import_directory, import_forever, import_sites

        sites = options["sites"]
        if watch:
            import_forever(
                directory, receipts, options["interval"], options["loops"], sites
            )
        elif sites:
            self.stdout.write(str(import_sites(directory)))
        else:
            self.stdout.write(str(import_directory(directory, receipts)))

    def do_import_receipts(self, directory=None, **options):
        from sync.transport.files import import_receipts

        self.stdout.write(str(import_receipts(directory)))

    def do_send(self, resend=False, **options):
        from sync.transport.files import send

        self._with_drop(lambda drop: send(drop, resend=resend), **options)

    def do_fetch_receipts(self, **options):
        from sync.transport.files import fetch_receipts

        self._with_drop(fetch_receipts, **options)

    def _with_drop(self, work, folder=None, sftp=False, **options):
        from sync.transport.files import FolderDrop, TransferFailed

        try:
            if sftp:
                from sync.transport.sftp import SftpDrop

                drop = SftpDrop()
            else:
                drop = FolderDrop(folder)
            try:
                self.stdout.write(str(work(drop)))
            finally:
                drop.close()
        except TransferFailed as exc:
            raise CommandError(str(exc)) from exc
