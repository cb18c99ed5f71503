"""org, school, contact and specialist: the customer registry and the support team.

ORG is an organization's id or exact name. Every refusal is one line naming the rule (exit 1); the rules
themselves live in mailbot.plans and mailbot.store.registry.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mailbot.cli.output import add_json_flag, dump, report, table
from mailbot.errors import RefusedError
from mailbot.plans import Plan, Product

if TYPE_CHECKING:  # the store is imported by the handlers that use it (mailbot.cli: start-up time)
    from sqlalchemy.orm import Session

    from mailbot.store import registry
    from mailbot.store.registry import ContactRow, DateChange

E = TypeVar("E", Product, Plan)
IMPORT_COLUMNS = ("email", "org", "name", "school")
REQUIRED_COLUMNS = ("email", "org")


def register(commands: Any) -> None:
    _register_org(commands)
    school = commands.add_parser("school", help="schools (sites) of a district or CMO")
    school_sub = school.add_subparsers(dest="school_command", metavar="COMMAND", required=True)
    add = school_sub.add_parser("add", help="a school of a district")
    add.add_argument("org", metavar="ORG")
    add.add_argument("name", metavar="NAME")
    add_json_flag(add)
    add.set_defaults(handler=cmd_school_add)
    _register_contact(commands)
    _register_specialist(commands)


def _register_org(commands: Any) -> None:
    org = commands.add_parser("org", help="organizations and their plans")
    sub = org.add_subparsers(dest="org_command", metavar="COMMAND", required=True)
    add = sub.add_parser("add", help="an organization and its plan")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--product", required=True, metavar=_choices(Product))
    add.add_argument("--plan", required=True, metavar=_choices(Plan))
    add.add_argument("--valid-from", metavar="DATE", help="first day of the plan (YYYY-MM-DD)")
    add.add_argument("--valid-until", metavar="DATE", help="last day of the plan (YYYY-MM-DD)")
    add_json_flag(add)
    add.set_defaults(handler=cmd_org_add)
    listing = sub.add_parser("list", help="organizations, plans and contact counts")
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_org_list)
    change = sub.add_parser("set", help="change an organization's plan, validity or status")
    change.add_argument("org", metavar="ORG")
    change.add_argument("--product", metavar=_choices(Product))
    change.add_argument("--plan", metavar=_choices(Plan))
    change.add_argument("--valid-from", metavar="DATE", help='YYYY-MM-DD, or "none" for no start')
    change.add_argument("--valid-until", metavar="DATE", help='YYYY-MM-DD, or "none" for no end')
    status = change.add_mutually_exclusive_group()
    status.add_argument("--suspended", dest="suspended", action="store_true", default=None)
    status.add_argument("--active", dest="suspended", action="store_false")
    add_json_flag(change)
    change.set_defaults(handler=cmd_org_set)


def _register_contact(commands: Any) -> None:
    contact = commands.add_parser("contact", help="named contacts of organizations")
    sub = contact.add_subparsers(dest="contact_command", metavar="COMMAND", required=True)
    add = sub.add_parser("add", help="a named contact; refused past the plan's limit")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument("--org", required=True, metavar="ORG")
    add.add_argument("--name", default="")
    add.add_argument("--school", metavar="SCHOOL", help="a school of the district (District Gold only)")
    add_json_flag(add)
    add.set_defaults(handler=cmd_contact_add)
    remove = sub.add_parser("remove", help="remove a named contact")
    remove.add_argument("email", metavar="EMAIL")
    add_json_flag(remove)
    remove.set_defaults(handler=cmd_contact_remove)
    listing = sub.add_parser("list", help="named contacts")
    listing.add_argument("--org", metavar="ORG")
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_contact_list)
    load = sub.add_parser("import", help="contacts from a CSV file (email,org,name,school): all rows or none")
    load.add_argument("file", metavar="FILE.csv")
    add_json_flag(load)
    load.set_defaults(handler=cmd_contact_import)


def _register_specialist(commands: Any) -> None:
    specialist = commands.add_parser("specialist", help="the support team")
    sub = specialist.add_subparsers(dest="specialist_command", metavar="COMMAND", required=True)
    add = sub.add_parser("add", help="a Product Support Specialist")
    add.add_argument("email", metavar="EMAIL")
    add.add_argument("--name", required=True)
    add_json_flag(add)
    add.set_defaults(handler=cmd_specialist_add)
    listing = sub.add_parser("list", help="the specialists")
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_specialist_list)
    away = sub.add_parser("away", help="skip a specialist in automatic assignment")
    away.add_argument("email", metavar="EMAIL")
    add_json_flag(away)
    away.set_defaults(handler=cmd_specialist_active, active=False)
    back = sub.add_parser("back", help="include a specialist in automatic assignment again")
    back.add_argument("email", metavar="EMAIL")
    add_json_flag(back)
    back.set_defaults(handler=cmd_specialist_active, active=True)


# --- organizations and schools -------------------------------------------------------------------------


def cmd_org_add(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    product, plan = _enum(Product, args.product, "--product"), _enum(Plan, args.plan, "--plan")
    valid_from, valid_until = _date(args.valid_from, "--valid-from"), _date(args.valid_until, "--valid-until")
    app = context.app

    def add(session: Session) -> dict[str, Any]:
        org = registry.add_org(
            session,
            args.name,
            product=product,
            plan=plan,
            valid_from=valid_from,
            valid_until=valid_until,
            now=app.clock.now(),
        )
        session.flush()  # the id
        return _org_json(org)

    org = app.db.call(add)
    report(args, org, f"added organization {_org_line(org)}")
    return 0


def cmd_org_list(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    orgs = context.app.db.call(registry.org_summaries)
    if args.json:
        dump([org.to_json() for org in orgs])
        return 0
    rows: list[tuple[object, ...]] = []
    for org in orgs:
        period = f"{org.valid_from or 'any time'} to {org.valid_until or 'no end'}"
        status = "suspended" if org.suspended else "active"
        rows.append((org.id, org.name, org.product, org.plan, period, f"{org.contacts}/{org.contact_limit}", status))
        for school in org.schools:
            rows.append(("", f"  school {school.name}", "", "", "", f"{school.contacts}/{org.school_contact_limit}", ""))
    table(("ID", "NAME", "PRODUCT", "PLAN", "VALID", "CONTACTS", "STATUS"), rows)
    return 0


def cmd_org_set(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry
    from mailbot.store.registry import KEEP

    product = _enum(Product, args.product, "--product") if args.product else None
    plan = _enum(Plan, args.plan, "--plan") if args.plan else None
    valid_from = _date_change(args.valid_from, "--valid-from")
    valid_until = _date_change(args.valid_until, "--valid-until")
    if (
        product is None
        and plan is None
        and valid_from is KEEP
        and valid_until is KEEP
        and args.suspended is None
    ):
        raise RefusedError(
            "nothing to change: give --plan, --product, --valid-from, --valid-until, --suspended or --active"
        )

    def change(session: Session) -> dict[str, Any]:
        org = registry.update_org(
            session,
            registry.find_org(session, args.org, lock=True),
            product=product,
            plan=plan,
            valid_from=valid_from,
            valid_until=valid_until,
            suspended=args.suspended,
        )
        return _org_json(org)

    org = context.app.db.call(change)
    report(args, org, f"changed organization {_org_line(org)}" + (" SUSPENDED" if org["suspended"] else ""))
    return 0


def cmd_school_add(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    def add(session: Session) -> dict[str, Any]:
        org = registry.find_org(session, args.org, lock=True)
        school = registry.add_school(session, org, args.name)
        session.flush()
        return {"id": school.id, "name": school.name, "organization_id": org.id, "organization": org.name}

    school = context.app.db.call(add)
    report(args, school, f"added school {school['name']} of {school['organization']}")
    return 0


# --- contacts ------------------------------------------------------------------------------------------


def cmd_contact_add(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    app = context.app

    def add(session: Session) -> dict[str, Any]:
        org = registry.find_org(session, args.org, lock=True)
        contact = registry.add_contact(
            session, args.email, org=org, name=args.name, school=args.school, now=app.clock.now()
        )
        session.flush()
        return {"id": contact.id, "address": contact.address, "name": contact.name, "organization": org.name,
                "school": args.school}

    contact = app.db.call(add)
    school = f" (school {contact['school']})" if contact["school"] else ""
    report(args, contact, f"added contact {contact['address']} to {contact['organization']}{school}")
    return 0


def cmd_contact_remove(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    address = context.app.db.call(lambda s: registry.remove_contact(s, args.email).address)
    report(args, {"address": address, "removed": True}, f"removed contact {address}")
    return 0


def cmd_contact_list(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    def listing(session: Session) -> list[registry.ContactSummary]:
        org = registry.find_org(session, args.org) if args.org else None
        return registry.contact_summaries(session, org)

    contacts = context.app.db.call(listing)
    if args.json:
        dump([c.to_json() for c in contacts])
        return 0
    table(
        ("ADDRESS", "NAME", "ORGANIZATION", "SCOPE", "LIMIT"),
        (
            (c.address, c.name[:30], c.organization, f"school {c.school}" if c.school else "organization",
             "OVER THE PLAN'S LIMIT" if c.over_limit else "ok")
            for c in contacts
        ),
    )
    return 0


def cmd_contact_import(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry
    from mailbot.store.registry import ImportRefused

    rows, problems = read_contact_rows(Path(args.file))
    app = context.app

    def load(session: Session) -> int:
        try:
            registry.import_contacts(session, rows, app.clock.now())
        except ImportRefused as refused:
            problems.extend(refused.problems)
        if problems:
            raise ImportRefused(sorted(problems))  # rolls the rows judged fine back: all or none
        return len(rows)

    try:
        count = app.db.call(load)
    except ImportRefused as refused:
        for line, reason in refused.problems:
            print(f"{args.file}:{line}: {reason}", file=sys.stderr)
        lines = len({line for line, _ in refused.problems})
        raise RefusedError(
            f"{args.file}: {lines} row(s) refused, nothing imported (an import applies all its rows or none)"
        ) from None
    report(args, {"imported": count, "file": args.file}, f"imported {count} contact(s) from {args.file}")
    return 0


def read_contact_rows(path: Path) -> tuple[list[ContactRow], list[tuple[int, str]]]:
    """The rows of a contact CSV (a header naming email, org, and optionally name and school).

    Returns the well-formed rows and the (line, reason) of each malformed one; a file that cannot be
    read, or whose header is wrong, is refused outright.
    """
    from mailbot.store.registry import ContactRow

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # utf-8-sig: spreadsheets write a BOM
            records = list(_records(csv.reader(handle)))
    except OSError as exc:
        raise RefusedError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RefusedError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except csv.Error as exc:
        raise RefusedError(f"{path}: not a readable CSV file ({exc})") from None
    if not records:
        raise RefusedError(f"{path}: empty; the first line names the columns: {','.join(IMPORT_COLUMNS)}")
    header_line, header = records[0]
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in IMPORT_COLUMNS]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if unknown or missing or len(set(columns)) != len(columns):
        raise RefusedError(
            f"{path}:{header_line}: the header must name the columns {', '.join(REQUIRED_COLUMNS)} and "
            f"optionally name, school, each once (found: {', '.join(columns) or 'nothing'})"
        )
    rows, problems = [], []
    for line, fields in records[1:]:
        if len(fields) > len(columns):
            problems.append((line, f"{len(fields)} fields, but the header names {len(columns)} columns"))
            continue
        values = dict(zip(columns, (f.strip() for f in fields), strict=False))
        school = values.get("school") or None
        rows.append(
            ContactRow(line, values.get("email", ""), values.get("org", ""), values.get("name", ""), school)
        )
    if not rows and not problems:
        raise RefusedError(f"{path}: no contact rows after the header")
    return rows, problems


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-blank record; a quoted field may span lines."""
    end = 0
    for fields in reader:
        start, end = end + 1, reader.line_num
        if any(field.strip() for field in fields):
            yield start, fields


# --- specialists ---------------------------------------------------------------------------------------


def cmd_specialist_add(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    app = context.app

    def add(session: Session) -> dict[str, Any]:
        specialist = registry.add_specialist(session, args.email, args.name, app.clock.now())
        session.flush()
        return {"id": specialist.id, "address": specialist.address, "name": specialist.name, "active": True}

    specialist = app.db.call(add)
    report(args, specialist, f"added specialist {specialist['address']}")
    return 0


def cmd_specialist_list(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    rows = context.app.db.call(
        lambda s: [
            {
                "address": sp.address,
                "name": sp.name,
                "active": sp.active,
                "last_assigned_at": sp.last_assigned_at.isoformat() if sp.last_assigned_at else None,
            }
            for sp in registry.specialists(s)
        ]
    )
    if args.json:
        dump(rows)
        return 0
    table(
        ("ADDRESS", "NAME", "STATUS", "LAST ASSIGNED"),
        (
            (row["address"], row["name"][:30], "active" if row["active"] else "away", row["last_assigned_at"] or "-")
            for row in rows
        ),
    )
    return 0


def cmd_specialist_active(args: argparse.Namespace, context: Any) -> int:
    from mailbot.store import registry

    address = context.app.db.call(
        lambda s: registry.set_specialist_active(s, args.email, args.active).address
    )
    report(args, {"address": address, "active": args.active},
           f"specialist {address} is {'back' if args.active else 'away'}")
    return 0


# --- argument helpers ----------------------------------------------------------------------------------


def _choices(kind: type[Product | Plan]) -> str:
    return "{" + ",".join(member.value for member in kind) + "}"


def _enum(kind: type[E], value: str, option: str) -> E:
    try:
        return kind(value.strip().lower())
    except ValueError:
        raise RefusedError(f"{option}: {value!r} is not one of {', '.join(m.value for m in kind)}") from None


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise RefusedError(f"{option}: {value!r} is not a date (YYYY-MM-DD)") from None


def _date_change(value: str | None, option: str) -> DateChange:
    from mailbot.store.registry import KEEP

    if value is None:
        return KEEP
    if value.strip().lower() == "none":
        return None
    return _date(value, option)


def _org_json(org: Any) -> dict[str, Any]:
    return {
        "id": org.id, "name": org.name, "product": org.product, "plan": org.plan,
        "valid_from": org.valid_from.isoformat() if org.valid_from else None,
        "valid_until": org.valid_until.isoformat() if org.valid_until else None,
        "suspended": bool(org.suspended),
    }


def _org_line(org: dict[str, Any]) -> str:
    period = f"{org['valid_from'] or 'any time'} to {org['valid_until'] or 'no end'}"
    return f"{org['id']} {org['name']}: product {org['product']}, plan {org['plan']}, valid {period}"
