#!/usr/bin/env bash
# Generate a realistic e-commerce SQLite database of about SIZE_MIB MiB (default 1024) at PATH.
# Text-heavy rows (names, emails, addresses, descriptions, notes) compress about 2x with gzip,
# like real shop data. Usage: scripts/gen-db.sh PATH [SIZE_MIB]
set -euo pipefail
out=${1:?usage: gen-db.sh PATH [SIZE_MIB]}
size_mib=${2:-1024}
rm -f "$out" "$out-wal" "$out-shm"
# About 330 bytes of table+index data per order (with its items): scale rows to the size asked for.
orders=$(( size_mib * 3100 ))
customers=$(( orders / 10 + 1 ))
products=$(( orders / 100 + 100 ))
sqlite3 "$out" <<SQL
PRAGMA page_size = 4096;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
CREATE TABLE words (i INTEGER PRIMARY KEY, w TEXT NOT NULL);
INSERT INTO words (w) VALUES ('alpha'),('bravo'),('charlie'),('delta'),('echo'),('foxtrot'),('golf'),('hotel'),
 ('india'),('juliet'),('kilo'),('lima'),('mike'),('november'),('oscar'),('papa'),('quebec'),('romeo'),('sierra'),
 ('tango'),('uniform'),('victor'),('whiskey'),('xray'),('yankee'),('zulu'),('street'),('avenue'),('road'),('lane'),
 ('red'),('blue'),('green'),('large'),('small'),('cotton'),('steel'),('organic'),('premium'),('classic');
CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL, address TEXT NOT NULL, phone TEXT, created_at TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, sku TEXT NOT NULL UNIQUE, title TEXT NOT NULL, description TEXT NOT NULL, price_cents INTEGER NOT NULL, stock INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id), placed_at TEXT NOT NULL, status TEXT NOT NULL, total_cents INTEGER NOT NULL, shipping_address TEXT NOT NULL, notes TEXT);
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id), line INTEGER NOT NULL, product_id INTEGER NOT NULL REFERENCES products(id), qty INTEGER NOT NULL, price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, line));
CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE INDEX orders_by_time ON orders(placed_at);
CREATE VIEW w AS SELECT w FROM words;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $customers)
INSERT INTO customers SELECT i,
  'user' || i || '.' || lower(hex(randomblob(3))) || '@example.com',
  (SELECT w FROM words WHERE words.i = 1 + (n.i * 0 + abs(random())) % 40) || ' ' || (SELECT w FROM words WHERE words.i = 1 + (n.i * 0 + abs(random())) % 40),
  (abs(random()) % 9999) || ' ' || (SELECT w FROM words WHERE words.i = 1 + (n.i * 0 + abs(random())) % 40) || ' ' || (SELECT w FROM words WHERE words.i = 27 + (n.i * 0 + abs(random())) % 4) || ', ' || upper(hex(randomblob(2))) || ' Springfield',
  '+1-555-' || printf('%07d', abs(random()) % 10000000),
  strftime('%Y-%m-%dT%H:%M:%SZ', 1600000000 + abs(random()) % 150000000, 'unixepoch')
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $products)
INSERT INTO products SELECT i, 'SKU-' || printf('%08d', i),
  (SELECT w FROM words WHERE words.i = 31 + (n.i * 0 + abs(random())) % 10) || ' ' || (SELECT w FROM words WHERE words.i = 1 + (n.i * 0 + abs(random())) % 26) || ' ' || i,
  'A ' || (SELECT w FROM words WHERE words.i = 31 + (n.i * 0 + abs(random())) % 10) || ' product made of ' || (SELECT w FROM words WHERE words.i = 36 + (n.i * 0 + abs(random())) % 5) || '. Batch ' || hex(randomblob(6)) || '. ' || (SELECT group_concat(w, ' ') FROM (SELECT w FROM words WHERE words.i > n.i * 0 ORDER BY random() LIMIT 12)),
  100 + abs(random()) % 100000, abs(random()) % 1000
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $orders)
INSERT INTO orders SELECT i, 1 + abs(random()) % $customers,
  strftime('%Y-%m-%dT%H:%M:%SZ', 1700000000 + i * 30, 'unixepoch'),
  CASE abs(random()) % 4 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'delivered' END,
  abs(random()) % 500000,
  (abs(random()) % 9999) || ' ' || (SELECT w FROM words WHERE words.i = 1 + (n.i * 0 + abs(random())) % 26) || ' ' || (SELECT w FROM words WHERE words.i = 27 + (n.i * 0 + abs(random())) % 4) || ', apt ' || (abs(random()) % 300) || ', ' || upper(hex(randomblob(3))) || ' Springfield, United States',
  CASE WHEN abs(random()) % 3 = 0 THEN 'Please leave at the door. Gift wrap: ' || (SELECT w FROM words WHERE words.i = 31 + (n.i * 0 + abs(random())) % 3) || '. Ref ' || hex(randomblob(24)) ELSE 'ref ' || hex(randomblob(24)) END
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $orders * 3)
INSERT INTO order_items SELECT 1 + (i - 1) / 3, 1 + (i - 1) % 3, 1 + abs(random()) % $products, 1 + abs(random()) % 5, 100 + abs(random()) % 100000 FROM n;
COMMIT;
DROP VIEW w;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
ls -l "$out"
