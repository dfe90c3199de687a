"""Export every lead with fast_bitrix24 (the yardstick) and print one JSON line of figures.

Usage: fast_bitrix24_export.py WEBHOOK_URL
fast_bitrix24's get_all() counts the list, then fetches start=0,50,... packed 50 to a batch.
"""
import asyncio
import json
import sys
import time

from fast_bitrix24 import BitrixAsync


async def main(webhook: str) -> None:
    b = BitrixAsync(webhook, verbose=False, ssl=False)
    t0 = time.monotonic()
    try:
        items = await b.get_all("crm.lead.list", params={"select": ["*"]})
    except Exception as e:  # report the failure as a figure, not a crash
        secs = time.monotonic() - t0
        print(json.dumps({"items": 0, "unique": 0, "seconds": secs,
                          "error": f"{type(e).__name__}: {str(e)[:160]}"}))
        return
    secs = time.monotonic() - t0
    ids = {int(i["ID"]) for i in items}
    print(json.dumps({"items": len(items), "unique": len(ids), "seconds": secs}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
