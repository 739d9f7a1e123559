"""The few Airflow REST calls the stack needs: health, a token, pools and connections (upserted).

Plain urllib on purpose: one `airflow pools set` CLI call costs ~4 s of imports here, a REST call
a few milliseconds, and the REST API is the stable public surface of Airflow 3.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request


class AirflowAPI:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, {"detail": raw.decode(errors="replace")}

    def health(self) -> dict:
        status, body = self.request("GET", "/api/v2/monitor/health")
        return body if status == 200 else {}

    def login(self, username: str, password: str) -> str:
        status, body = self.request("POST", "/auth/token", {"username": username, "password": password})
        if status not in (200, 201) or "access_token" not in body:
            raise RuntimeError(f"Airflow login as {username!r} failed: HTTP {status} {body}")
        self.token = body["access_token"]
        return self.token

    def _upsert(self, collection: str, key: str, body: dict) -> str:
        status, resp = self.request("POST", f"/api/v2/{collection}", body)
        if status in (200, 201):
            return "created"
        if status == 409:
            status, resp = self.request("PATCH", f"/api/v2/{collection}/{key}", body)
            if status == 200:
                return "updated"
        raise RuntimeError(f"Airflow {collection}/{key}: HTTP {status} {resp}")

    def set_pool(self, name: str, slots: int, description: str) -> str:
        return self._upsert("pools", name, {"name": name, "slots": slots, "description": description,
                                            "include_deferred": False})

    def get_pool(self, name: str) -> dict | None:
        status, body = self.request("GET", f"/api/v2/pools/{name}")
        return body if status == 200 else None

    def set_variable(self, key: str, value: str, description: str) -> str:
        return self._upsert("variables", key, {"key": key, "value": value, "description": description})

    def get_variable(self, key: str) -> str | None:
        status, body = self.request("GET", f"/api/v2/variables/{key}")
        return body.get("value") if status == 200 else None

    def set_connection(self, conn_id: str, conn_type: str, **fields) -> str:
        body = {"connection_id": conn_id, "conn_type": conn_type, **fields}
        if isinstance(body.get("extra"), dict):
            body["extra"] = json.dumps(body["extra"])
        return self._upsert("connections", conn_id, body)

    def get_connection(self, conn_id: str) -> dict | None:
        status, body = self.request("GET", f"/api/v2/connections/{conn_id}")
        return body if status == 200 else None
