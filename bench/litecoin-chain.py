#!/usr/bin/env python3
"""Make a litecoind regtest chain with transactions in every block, for bench/node-speed.sh.

    python3 bench/litecoin-chain.py DATADIR BLOCKS [TXS_PER_BLOCK] [OUTPUTS_PER_TX]

Starts litecoind on DATADIR (created), mines BLOCKS blocks and stops it. Once the first coinbases mature
(block 112), every block carries TXS_PER_BLOCK transactions, each spending two confirmed outputs and paying
up to OUTPUTS_PER_TX new ones, signed (`signrawtransactionwithkey`) with keys that no loaded wallet tracks:
replaying the chain verifies real signatures, and the UTXO set (the chainstate) grows by about
OUTPUTS_PER_TX - 2 entries per transaction.
After block 431 one payment to an MWEB address keeps mining going past block 432, where MWEB activates.
The wallets are removed at the end (a node secret; the benchmark replays with -disablewallet).

Deterministic in shape, not in bytes (keys and block times differ between runs). Prints one line of
totals at the end.
"""

import base64
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

COIN = 100_000_000
MIN_OUTPUT = 100_000  # sats; far above the dust limit
FEE_RATE = 20  # sats per vbyte (litecoind's minimum relay fee is 10)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Rpc:
    def __init__(self, datadir, port):
        self.datadir, self.port, self.conn, self.auth = datadir, port, None, None

    def _connect(self):
        cookie = open(os.path.join(self.datadir, "regtest", ".cookie")).read().strip()
        self.auth = "Basic " + base64.b64encode(cookie.encode()).decode()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def _post(self, body, path="/"):
        if self.conn is None:
            self._connect()
        self.conn.request("POST", path, json.dumps(body),
                          {"Authorization": self.auth, "Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return json.loads(resp.read())

    def call(self, method, *params, wallet=None):
        path = f"/wallet/{wallet}" if wallet else "/"
        r = self._post({"jsonrpc": "1.0", "id": 0, "method": method, "params": list(params)}, path)
        if r.get("error"):
            raise RuntimeError(f"{method}: {r['error']}")
        return r["result"]

    def batch(self, method, param_lists):
        """One HTTP request for many calls of `method`; results in order."""
        if not param_lists:
            return []
        body = [{"jsonrpc": "1.0", "id": i, "method": method, "params": p}
                for i, p in enumerate(param_lists)]
        out = sorted(self._post(body), key=lambda r: r["id"])
        for r in out:
            if r.get("error"):
                raise RuntimeError(f"{method}: {r['error']}")
        return [r["result"] for r in out]


def ltc(sats):
    return f"{sats // COIN}.{sats % COIN:08d}"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    datadir, blocks = sys.argv[1], int(sys.argv[2])
    txs_per_block = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    outputs_per_tx = int(sys.argv[4]) if len(sys.argv) > 4 else 12
    os.makedirs(datadir, exist_ok=True)
    port = free_port()
    node = subprocess.Popen(
        ["litecoind", "-regtest", f"-datadir={datadir}", f"-rpcport={port}", "-listen=0", "-connect=0",
         "-fallbackfee=0.0001", "-maxmempool=1000", "-rpcthreads=4", "-printtoconsole=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rpc = Rpc(datadir, port)
    try:
        for _ in range(600):
            try:
                rpc.call("getblockcount")
                break
            except (OSError, RuntimeError, json.JSONDecodeError):
                rpc.conn = None
                time.sleep(0.1)
        else:
            raise RuntimeError("litecoind did not answer RPC")
        generate(rpc, blocks, txs_per_block, outputs_per_tx)
        rpc.call("stop")
        node.wait(timeout=300)
    finally:
        if node.poll() is None:
            node.terminate()
            node.wait()
    shutil.rmtree(os.path.join(datadir, "regtest", "wallets"), ignore_errors=True)


def generate(rpc, blocks, txs_per_block, outputs_per_tx):
    rng = random.Random(11)
    started = time.time()
    # The miner wallet pays the MWEB peg-in. Every other coinbase and output goes to one of a set of keys
    # held outside any loaded wallet, so the node does not track the growing UTXO set in a wallet.
    rpc.call("createwallet", "miner")
    miner = rpc.call("getnewaddress", wallet="miner")
    rpc.call("createwallet", "keys")
    keys = []  # (address, scriptPubKey, WIF)
    for _ in range(max(1, outputs_per_tx)):
        a = rpc.call("getnewaddress", "", "bech32", wallet="keys")
        keys.append((a, rpc.call("getaddressinfo", a, wallet="keys")["scriptPubKey"],
                     rpc.call("dumpprivkey", a, wallet="keys")))
    rpc.call("unloadwallet", "keys")
    wifs = [k[2] for k in keys]

    pool = []  # confirmed, mature outputs of the keys: (txid, vout, sats, key index)
    coinbases = []  # (height, txid, sats), until mature
    rpc.call("generatetoaddress", 10, miner)
    ntx = 0
    while True:
        height = rpc.call("getblockcount")
        if height >= blocks:
            break
        if height == 431:
            # MWEB activates at 432: without a peg-in after 431 the next block cannot be mined.
            mweb = rpc.call("getnewaddress", "", "mweb", wallet="miner")
            rpc.call("sendtoaddress", mweb, 1, wallet="miner")
        txs = []
        for _ in range(txs_per_block):
            tx = make_tx(rng, pool, len(keys))
            if tx is None:
                break
            txs.append(tx)
        unsigned = rpc.batch("createrawtransaction", [
            [[{"txid": t, "vout": v} for t, v, _, _ in ins], [{keys[k][0]: ltc(s)} for k, s in outs]]
            for ins, outs in txs])
        signed = rpc.batch("signrawtransactionwithkey", [
            [u, wifs, [{"txid": t, "vout": v, "scriptPubKey": keys[k][1], "amount": ltc(s)}
                       for t, v, s, k in ins]]
            for u, (ins, _) in zip(unsigned, txs)])
        txids = rpc.batch("sendrawtransaction", [[s["hex"]] for s in signed])
        ntx += len(txids)
        bh = rpc.call("generatetoaddress", 1, keys[0][0])[0]
        for txid, (_, outs) in zip(txids, txs):
            pool.extend((txid, vout, s, k) for vout, (k, s) in enumerate(outs))
        blk = rpc.call("getblock", bh, 2)
        cb = blk["tx"][0]
        coinbases.append((height + 1, cb["txid"], round(cb["vout"][0]["value"] * COIN)))
        while coinbases and coinbases[0][0] + 100 <= height + 1:
            _, txid, sats = coinbases.pop(0)
            if sats >= 2 * MIN_OUTPUT:
                pool.append((txid, 0, sats, 0))
        if (height + 1) % 250 == 0:
            print(f"block {height + 1}: {ntx} txs, {len(pool)} spendable outputs, "
                  f"{time.time() - started:.0f} s", file=sys.stderr, flush=True)
    info = rpc.call("gettxoutsetinfo")
    print(json.dumps({"blocks": blocks, "transactions": ntx, "utxos": info["txouts"],
                      "seconds": round(time.time() - started, 1)}))


def make_tx(rng, pool, nkeys):
    """Two random inputs (more while they are small) and up to `nkeys` outputs, one per key."""
    ins, total = [], 0
    while pool and (len(ins) < 2 or total < 4 * MIN_OUTPUT) and len(ins) < 20:
        j = rng.randrange(len(pool))
        pool[j], pool[-1] = pool[-1], pool[j]
        ins.append(pool.pop())
        total += ins[-1][2]
    n = nkeys
    fee = FEE_RATE * (11 + 68 * len(ins) + 31 * n)
    while n > 1 and total - fee < n * MIN_OUTPUT:
        n -= 1
        fee = FEE_RATE * (11 + 68 * len(ins) + 31 * n)
    left = total - fee
    if len(ins) < 2 or left < MIN_OUTPUT:
        pool.extend(ins)
        return None
    each = left // n
    amounts = [each] * n
    amounts[-1] += left - each * n
    # A real wallet's outputs are not all alike: vary them, keeping the sum.
    for k in range(n - 1):
        d = rng.randrange(each // 4 + 1)
        if amounts[k] - d >= MIN_OUTPUT:
            amounts[k] -= d
            amounts[-1] += d
    return ins, list(enumerate(amounts))


if __name__ == "__main__":
    main()
