#!/usr/bin/env python3
"""Creates an MLflow user on this server, as its admin; the new user's password comes on standard input.

Usage (inside the server's container, where MLFLOW_AUTH_ADMIN_PASSWORD is set):
    printf %s "$PASSWORD" | env-from-files create-user NAME

The password is read from standard input, never from the command line, which
other users of the machine (and Kubernetes' audit log of exec) can see.
"""

import os
import sys

import requests

SERVER = "http://127.0.0.1:5000"


def main(username: str) -> None:
    password = sys.stdin.read().strip()
    if not password:
        sys.exit("give the new user's password on standard input")
    admin = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    response = requests.post(f"{SERVER}/api/2.0/mlflow/users/create", auth=admin, timeout=30,
                             json={"username": username, "password": password})
    if response.status_code != 200:
        sys.exit(f"could not create user {username}: HTTP {response.status_code} {response.text[:300]}")
    print(f"user {username} created")


if __name__ == "__main__":
    main(sys.argv[1])
