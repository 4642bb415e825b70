#!/usr/bin/env python3
"""A ComfyUI API client written against ComfyUI's documented API, in the manner of ComfyUI's
own script_examples/websockets_api_example.py: queue an API-format prompt with a client id,
follow the websocket until `executing` with `node: null` for that prompt, then read
/history/{prompt_id} and fetch every output image through /view.

Nothing in it knows about LatentFlow; it runs unchanged against a ComfyUI server.

    comfy_ws_client.py --server 127.0.0.1:8188 --prompt prompt.json --out DIR
"""

import argparse
import json
import os
import sys
import urllib.parse
import urllib.request
import uuid

import websocket  # websocket-client


def queue_prompt(server, prompt, client_id):
    body = json.dumps({"prompt": prompt, "client_id": client_id}).encode("utf-8")
    req = urllib.request.Request(f"http://{server}/prompt", data=body,
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def get_history(server, prompt_id):
    with urllib.request.urlopen(f"http://{server}/history/{prompt_id}") as r:
        return json.loads(r.read())


def get_image(server, filename, subfolder, folder_type):
    query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
    with urllib.request.urlopen(f"http://{server}/view?{query}") as r:
        return r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    prompt = json.load(open(args.prompt))
    client_id = str(uuid.uuid4())
    ws = websocket.WebSocket()
    ws.connect(f"ws://{args.server}/ws?clientId={client_id}")
    prompt_id = queue_prompt(args.server, prompt, client_id)["prompt_id"]
    seen = []
    previews = 0
    while True:
        out = ws.recv()
        if isinstance(out, str):
            message = json.loads(out)
            seen.append(message["type"])
            if message["type"] == "executing":
                data = message["data"]
                if data["node"] is None and data["prompt_id"] == prompt_id:
                    break
        else:
            previews += 1
    ws.close()
    history = get_history(args.server, prompt_id)[prompt_id]
    os.makedirs(args.out, exist_ok=True)
    saved = []
    for node_id, node_output in history["outputs"].items():
        for image in node_output.get("images", []):
            data = get_image(args.server, image["filename"], image["subfolder"], image["type"])
            path = os.path.join(args.out, f"{node_id}_{image['filename']}")
            with open(path, "wb") as f:
                f.write(data)
            saved.append(path)
    print(json.dumps({"prompt_id": prompt_id, "events": seen, "previews": previews,
                      "status": history["status"], "saved": saved}))
    return 0 if history["status"]["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
