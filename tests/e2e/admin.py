"""Provides a person at the Django admin: log in, open a change form, save it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import requests

PASSWORD = "e2e-admin-password"


class _Form(HTMLParser):
    """Collect the values a browser would submit from the admin's change form."""

    def __init__(self):
        super().__init__()
        self.values: dict[str, str] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        name = attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text")
            if kind in ("submit", "button", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            self.values[name] = attrs.get("value", "on" if kind == "checkbox" else "")
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in attrs:
            self.values[self._select] = attrs.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.values[name] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea] += data


class AdminSession:
    """A logged-in session at a node's admin."""

    def __init__(self, node):
        self.node = node
        self.session = requests.Session()

    @classmethod
    def for_new_superuser(cls, node, username: str = "data-manager") -> AdminSession:
        node.manage(
            "createsuperuser", "--noinput", "--username", username,
            "--email", f"{username}@example.org",
            env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )  # fmt: skip
        admin = cls(node)
        admin.login(username)
        return admin

    def login(self, username: str) -> None:
        url = f"{self.node.url}/admin/login/"
        page = self.session.get(url, timeout=10)
        page.raise_for_status()
        answer = self.session.post(
            url,
            data={
                "csrfmiddlewaretoken": self._csrf(page.text),
                "username": username,
                "password": PASSWORD,
                "next": "/admin/",
            },
            timeout=10,
        )
        assert "/admin/login/" not in answer.url, "admin login was refused"

    def change(self, app_model: str, pk: str, **updates: str) -> None:
        """Open a record's change form, change some fields and save it."""
        url = f"{self.node.url}/admin/{app_model}/{pk}/change/"
        page = self.session.get(url, timeout=10)
        page.raise_for_status()
        form = _Form()
        form.feed(page.text)
        values = {**form.values, **updates, "_save": "Save"}
        answer = self.session.post(url, data=values, timeout=30)
        answer.raise_for_status()
        assert "errornote" not in answer.text, _errors(answer.text)

    def page(self, path: str) -> str:
        answer = self.session.get(f"{self.node.url}{path}", timeout=10)
        answer.raise_for_status()
        return answer.text

    @staticmethod
    def _csrf(html: str) -> str:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert found, "no CSRF token on the admin page"
        return found.group(1)


def _errors(html: str) -> str:
    return "; ".join(re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', html))
