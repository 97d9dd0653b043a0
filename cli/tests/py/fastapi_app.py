"""A small FastAPI app whose routes declare OAuth2 scopes with Security(...), as app teams
write them. Prints the app's OpenAPI document (app.openapi()) as JSON on stdout."""

import json
import sys

from fastapi import Depends, FastAPI, Security
from fastapi.security import APIKeyHeader, OAuth2AuthorizationCodeBearer, SecurityScopes

oauth2 = OAuth2AuthorizationCodeBearer(
    authorizationUrl="https://auth.example/oauth2/authorize",
    tokenUrl="https://auth.example/oauth2/token",
    scopes={
        "read:items": "Read items",
        "write:items": "Create and change items",
        "admin": "Administer the shop",
    },
)
api_key = APIKeyHeader(name="X-Key")


def user(security_scopes: SecurityScopes, token: str = Depends(oauth2)) -> str:
    # scopegate checks the token in front of the app; the app only reads the identity.
    return token


app = FastAPI(title="Orders API", version="1.0.0")


@app.get("/health")
def health():
    return {"ok": True}


@app.get("/items/{item_id}")
def read_item(item_id: int, who: str = Security(user, scopes=["read:items"])):
    return {"id": item_id}


@app.get("/items")
def list_items(who: str = Security(user, scopes=["read:items"])):
    return []


@app.post("/items")
def create_item(who: str = Security(user, scopes=["write:items"]), key: str = Depends(api_key)):
    return {"created": True}


@app.delete("/items/{item_id}")
def delete_item(item_id: int, who: str = Security(user, scopes=["write:items", "admin"])):
    return {"deleted": item_id}


@app.get("/users/me")
def me(who: str = Security(user)):
    return {"me": who}


@app.get("/legacy/report")
def legacy(key: str = Depends(api_key)):
    return {}


if __name__ == "__main__":
    json.dump(app.openapi(), sys.stdout)
