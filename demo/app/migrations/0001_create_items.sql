-- Items shown by the /items endpoint; proves migrations ran.
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    name VARCHAR(200) NOT NULL
);
INSERT INTO items (id, name) VALUES (1, 'alpha');
INSERT INTO items (id, name) VALUES (2, 'beta');
