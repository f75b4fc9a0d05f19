#!/usr/bin/env python3
"""Generates leakscan's own labelled detection corpus (JSON lines for eval.py).

Positives are fakes of published credential formats and of provider-less
credentials (password assignments, connection strings, command lines, config
files, framework secrets, private keys), each embedded in a realistic code or
config snippet. Negatives are look-alikes of the same: placeholders, template
variables, environment lookups, wrong lengths, hashes, public keys. Every value
is drawn from a seeded random generator, so the corpus is the same on every
run and holds no real credential.

Usage: corpus.py [--seed N] [--per-template K] > corpus.jsonl
"""
import argparse
import base64
import hashlib
import json
import random
import string
import zlib

B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


class Gen:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def s(self, alphabet, n):
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def b62(self, n):
        return self.s(B62, n)

    def hex(self, n):
        return self.s(HEX, n)

    def upper(self, n):
        return self.s(string.ascii_uppercase + string.digits, n)

    def b64url(self, n):
        return self.s(B62 + "-_", n)

    def password(self):
        # A typical strong password: letters, digits and a symbol or two.
        core = self.b62(self.rng.randint(10, 18))
        symbols = "!#%*+-.@^_"
        cut = self.rng.randint(2, len(core) - 2)
        return core[:cut] + self.rng.choice(symbols) + core[cut:]

    def user(self):
        return self.rng.choice(["svc_deploy", "app", "etl", "ci-bot", "reporting", "backup", "orders"])

    def host(self):
        return self.rng.choice(["db.internal", "10.4.2.17", "pg-prod.acme-corp.io", "mq.acme-corp.io",
                                "cache-01.acme-corp.io"])

    def uuid(self):
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def crc_token(self, prefix):
        random_part = self.b62(30)
        value = zlib.crc32(random_part.encode())
        digits = []
        for _ in range(6):
            digits.append("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[value % 62])
            value //= 62
        return prefix + random_part + "".join(reversed(digits))


# Provider formats as each provider documents them: (name, make(gen), variable name).
PROVIDERS = [
    ("AWS access key id", lambda g: "AKIA" + g.s(string.ascii_uppercase + "234567", 16), "AWS_ACCESS_KEY_ID"),
    ("GitHub classic token", lambda g: g.crc_token("ghp_"), "GITHUB_TOKEN"),
    ("GitHub fine-grained token", lambda g: "github_pat_" + g.b62(22) + "_" + g.b62(59), "GH_PAT"),
    ("GitLab personal token", lambda g: "glpat-" + g.b64url(20), "GITLAB_TOKEN"),
    ("Slack bot token", lambda g: f"xoxb-{g.s(string.digits, 12)}-{g.s(string.digits, 13)}-{g.b62(24)}", "SLACK_BOT_TOKEN"),
    ("Stripe secret key", lambda g: "sk_live_" + g.b62(99)[:g.rng.randint(24, 99)], "STRIPE_SECRET_KEY"),
    ("OpenAI project key", lambda g: "sk-proj-" + g.b64url(74) + "T3BlbkFJ" + g.b64url(74), "OPENAI_API_KEY"),
    ("Anthropic key", lambda g: "sk-ant-api03-" + g.b64url(93) + "AA", "ANTHROPIC_API_KEY"),
    ("npm token", lambda g: g.crc_token("npm_"), "NPM_TOKEN"),
    ("PyPI token", lambda g: "pypi-AgEIcHlwaS5vcmc" + g.b64url(60), "PYPI_TOKEN"),
    ("SendGrid key", lambda g: "SG." + g.b64url(22) + "." + g.b64url(43), "SENDGRID_API_KEY"),
    ("Google API key", lambda g: "AIzaSy" + g.b64url(33), "GOOGLE_MAPS_KEY"),
    ("Hugging Face token", lambda g: "hf_" + g.s(string.ascii_letters, 34), "HF_TOKEN"),
    ("Shopify access token", lambda g: "shpat_" + g.hex(32), "SHOPIFY_TOKEN"),
    ("DigitalOcean token", lambda g: "dop_v1_" + g.hex(64), "DIGITALOCEAN_TOKEN"),
    ("Doppler token", lambda g: "dp.st." + g.b62(43), "DOPPLER_TOKEN"),
    ("Databricks token", lambda g: "dapi" + g.hex(32), "DATABRICKS_TOKEN"),
    ("Twilio API key", lambda g: "SK" + g.hex(32), "TWILIO_API_KEY"),
    ("Mailgun key", lambda g: "key-" + g.hex(32), "MAILGUN_API_KEY"),
    ("Age secret key", lambda g: "AGE-SECRET-KEY-1" + g.s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58), "AGE_KEY"),
    ("Grafana service account token", lambda g: "glsa_" + g.b62(32) + "_" + g.hex(8), "GRAFANA_TOKEN"),
    ("Linear API key", lambda g: "lin_api_" + g.b62(40), "LINEAR_API_KEY"),
    ("Postman API key", lambda g: "PMAK-" + g.hex(24) + "-" + g.hex(34), "POSTMAN_API_KEY"),
    ("Sentry org auth token", lambda g: "sntrys_eyJpYXQiOjE3" + g.b62(100) + "_" + g.b62(43), "SENTRY_AUTH_TOKEN"),
    ("Pulumi token", lambda g: "pul-" + g.hex(40), "PULUMI_ACCESS_TOKEN"),
    ("Vault service token", lambda g: "hvs." + g.b64url(90), "VAULT_TOKEN"),
    ("New Relic user key", lambda g: "NRAK-" + g.upper(27), "NEW_RELIC_API_KEY"),
    ("Atlassian API token", lambda g: "ATATT3xFfGF0" + g.b64url(180) + "=" + g.hex(8).upper(), "JIRA_API_TOKEN"),
    ("Perplexity key", lambda g: "pplx-" + g.b62(48), "PERPLEXITY_API_KEY"),
    ("Groq key", lambda g: "gsk_" + g.b62(52), "GROQ_API_KEY"),
]

# How a developer writes a value into a file: (format name, template). {name}, {value}.
EMBEDDINGS = [
    ("env", "{name}={value}\n"),
    ("shell", "export {name}=\"{value}\"\n"),
    ("yaml", "env:\n  {name}: {value}\n"),
    ("json", "{{\n  \"{lname}\": \"{value}\",\n  \"region\": \"eu-west-1\"\n}}\n"),
    ("python", "{lname} = \"{value}\"\nclient = Client({lname})\n"),
    ("javascript", "const {cname} = '{value}';\nmodule.exports = {{ {cname} }};\n"),
    ("go", "const {cname} = \"{value}\"\n"),
    ("curl", "curl -H \"Authorization: Bearer {value}\" https://api.acme-corp.io/v1/items\n"),
]

# Look-alikes of a provider value.
def provider_lookalikes(g, make):
    real = make(g)
    cut = max(4, min(len(real) - 6, real.find("_") + 6 if "_" in real else 6))
    return [
        real[:cut] + "x" * (len(real) - cut),                  # masked
        "${" + "API_TOKEN" + "}",                                # template
        real[:cut] + "...",                                      # truncated
        real[:cut + 3],                                          # too short
        "<your-token-here>",
    ]


def camel(name):
    parts = name.lower().split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def provider_rows(g, per):
    rows = []
    for provider, make, var in PROVIDERS:
        for _ in range(per):
            fmt, template = g.rng.choice(EMBEDDINGS)
            text = template.format(name=var, lname=var.lower(), cname=camel(var), value=make(g))
            rows.append(("provider format", "positive", text, None))
        for fake in provider_lookalikes(g, make)[:2 if per < 2 else 5]:
            fmt, template = g.rng.choice(EMBEDDINGS[:7])
            rows.append(("provider format", "negative",
                         template.format(name=var, lname=var.lower(), cname=camel(var), value=fake), None))
    return rows


def password_rows(g, per):
    templates = [
        ("python", "DB_PASSWORD = \"{p}\"\n", "DB_PASSWORD = os.environ[\"DB_PASSWORD\"]\n"),
        ("javascript", "const config = {{ user: 'app', password: '{p}' }};\n", "const config = {{ user: 'app', password: process.env.DB_PASSWORD }};\n"),
        ("go", "db, err := sql.Open(\"mysql\", dsn)\npassword := \"{p}\"\n", "password := os.Getenv(\"DB_PASSWORD\")\n"),
        ("java", "private static final String PASSWORD = \"{p}\";\n", "private static final String PASSWORD = System.getenv(\"PASSWORD\");\n"),
        ("csharp", "var password = \"{p}\";\n", "var password = Environment.GetEnvironmentVariable(\"PASSWORD\");\n"),
        ("ruby", "config.password = '{p}'\n", "config.password = ENV['SMTP_PASSWORD']\n"),
        ("php", "define('DB_PASSWORD', '{p}');\n", "define('DB_PASSWORD', getenv('DB_PASSWORD'));\n"),
        ("yaml", "database:\n  username: app\n  password: {p}\n", "database:\n  username: app\n  password: ${{DB_PASSWORD}}\n"),
        ("json", "{{\"smtpPassword\": \"{p}\"}}\n", "{{\"smtpPassword\": \"{{{{ smtp_password }}}}\"}}\n"),
        ("xml", "<property name=\"password\">{p}</property>\n", "<property name=\"password\">${{jdbc.password}}</property>\n"),
        ("properties", "spring.datasource.password={p}\n", "spring.datasource.password=${{SPRING_DATASOURCE_PASSWORD}}\n"),
        ("dotenv", "ADMIN_PASSWORD={p}\n", "ADMIN_PASSWORD=changeme\n"),
        ("terraform", "resource \"aws_db_instance\" \"db\" {{\n  password = \"{p}\"\n}}\n", "resource \"aws_db_instance\" \"db\" {{\n  password = var.db_password\n}}\n"),
        ("dockerfile", "ENV POSTGRES_PASSWORD={p}\n", "ENV POSTGRES_PASSWORD=${{POSTGRES_PASSWORD}}\n"),
        ("ini", "[database]\npassword = {p}\n", "[database]\npassword = <password>\n"),
        ("python env default", "SECRET_KEY = os.environ.get(\"APP_SECRET_KEY\", \"{p}\")\n", "SECRET_KEY = os.environ.get(\"APP_SECRET_KEY\", \"\")\n"),
        ("node env default", "const token = process.env.SYNC_API_TOKEN || \"{p}\";\n", "const token = process.env.SYNC_API_TOKEN || defaults.token;\n"),
    ]
    rows = []
    for name, positive, negative in templates:
        for _ in range(per):
            rows.append(("password assignment", "positive", positive.format(p=g.password()), None))
        rows.append(("password assignment", "negative", negative, None))
    return rows


def connection_rows(g, per):
    rows = []
    for _ in range(per):
        p = g.password().replace("@", "#").replace("/", "-")
        u, h = g.user(), g.host()
        for text in [
            f"jdbc:postgresql://{h}:5432/app?user={u}&password={p}",
            f"jdbc:sqlserver://{h}:1433;databaseName=app;user={u};password={p};",
            f"Server={h};Database=app;User Id={u};Password={p};",
            f"Driver={{ODBC Driver 18 for SQL Server}};Server={h};Uid={u};Pwd={p};",
            f"DATABASE_URL=postgres://{u}:{p}@{h}:5432/app",
            f"mysql://{u}:{p}@{h}:3306/shop",
            f"MONGO_URI=mongodb+srv://{u}:{p}@cluster0.acme-corp.io/app",
            f"REDIS_URL=redis://:{p}@{h}:6379/0",
            f"amqp://{u}:{p}@{h}:5672/vhost",
            f"smtp_url: smtps://{u}:{p}@smtp.acme-corp.io:465",
            f"ftp://{u}:{p}@files.acme-corp.io/upload",
            f"https://{u}:{p}@git.acme-corp.io/team/repo.git",
            f"MONGO_URI=mongodb://{u}:{p[:4]}@{p[4:]}@{h}:27017/app",
        ]:
            rows.append(("connection string", "positive", text + "\n", None))
    for text in [
        "DATABASE_URL=postgres://app:${DB_PASSWORD}@db.internal:5432/app",
        "mysql://root:<password>@localhost:3306/shop",
        "MONGO_URI=mongodb+srv://app:****@cluster0.acme-corp.io/app",
        "Server=db;Database=app;User Id=app;Password={0};",
        "amqp://guest:%s@localhost:5672/" ,
        "https://user:password@git.example.com/team/repo.git",
    ]:
        rows.append(("connection string", "negative", text + "\n", None))
    return rows


def command_rows(g, per):
    rows = []
    for _ in range(per):
        p = g.password().replace("'", "")
        for text in [
            f"curl -u deploy:{p} https://nexus.acme-corp.io/service/rest/v1/status",
            f"curl -H 'Authorization: Basic {base64.b64encode(f'ci-bot:{p}'.encode()).decode()}' https://ci.acme-corp.io/api",
            f"mysql -u root -p{p} shop < dump.sql",
            f"sshpass -p '{p}' ssh admin@10.0.0.12",
            f"PGPASSWORD={p} psql -h db.internal -U app app",
            f"curl -s -X POST https://ci.acme-corp.io/api/builds \\\n  -H 'Accept: application/json' \\\n  -u deploy:{p}",
            f"curl -d client_secret={g.b62(32)} https://auth.acme-corp.io/oauth/token",
        ]:
            rows.append(("command line", "positive", text + "\n", None))
    for text in [
        "curl -u \"$USER:$PASS\" https://nexus.acme-corp.io/",
        "curl -H \"Authorization: Bearer ${TOKEN}\" https://api.acme-corp.io/",
        "mysql -u root -p shop < dump.sql",
        "sshpass -p \"$SSH_PASS\" ssh admin@10.0.0.12",
        "curl -H 'Authorization: Basic dXNlcjpwYXNzd29yZA==' http://localhost:8080/",
    ]:
        rows.append(("command line", "negative", text + "\n", None))
    return rows


def config_rows(g, per):
    rows = []
    for _ in range(per):
        p = g.password()
        auth = base64.b64encode(f"deployer:{p}".encode()).decode()
        rows += [
            ("config file", "positive", f"//registry.npmjs.org/:_authToken={g.crc_token('npm_')}\n", ".npmrc"),
            ("config file", "positive", f"[distutils]\nindex-servers = pypi\n\n[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmc{g.b64url(60)}\n", ".pypirc"),
            ("config file", "positive", f"<configuration>\n  <packageSourceCredentials>\n    <feed>\n      <add key=\"Username\" value=\"ci\" />\n      <add key=\"ClearTextPassword\" value=\"{p}\" />\n    </feed>\n  </packageSourceCredentials>\n</configuration>\n", "NuGet.config"),
            ("config file", "positive", f"<settings>\n  <servers>\n    <server>\n      <id>releases</id>\n      <username>deployer</username>\n      <password>{p}</password>\n    </server>\n  </servers>\n</settings>\n", "settings.xml"),
            ("config file", "positive", json.dumps({"auths": {"registry.acme-corp.io": {"auth": auth}}}, indent=2) + "\n", "config.json"),
            ("config file", "positive", f"machine api.acme-corp.io\n  login deployer\n  password {p}\n", ".netrc"),
            ("config file", "positive", f"https://deployer:{g.b62(24)}@git.acme-corp.io\n", ".git-credentials"),
            ("config file", "positive", f"[Interface]\nAddress = 10.8.0.2/24\nPrivateKey = {base64.b64encode(bytes(g.rng.getrandbits(8) for _ in range(32))).decode()}\n", "wg0.conf"),
            ("config file", "positive", f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n  username: YXBw\n  password: {base64.b64encode(p.encode()).decode()}\n", "secret.yaml"),
        ]
    rows += [
        ("config file", "negative", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n", ".npmrc"),
        ("config file", "negative", "<add key=\"ClearTextPassword\" value=\"%NUGET_PASSWORD%\" />\n", "NuGet.config"),
        ("config file", "negative", "<password>${env.MAVEN_PASSWORD}</password>\n", "settings.xml"),
        ("config file", "negative", json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"user:password").decode()}}}) + "\n", "config.json"),
        ("config file", "negative", "apiVersion: v1\nkind: Secret\ndata:\n  password: " + base64.b64encode(b"changeme").decode() + "\n", "secret.yaml"),
        ("config file", "negative", "[Interface]\nPrivateKey = <client-private-key>\n", "wg0.conf"),
    ]
    return rows


def framework_rows(g, per):
    rows = []
    for _ in range(per):
        rows += [
            ("framework secret", "positive", f"SECRET_KEY = 'django-insecure-{g.s(string.ascii_lowercase + string.digits + '!@#%^&*(-_=+)', 50)}'\n", "settings.py"),
            ("framework secret", "positive", f"production:\n  secret_key_base: {g.hex(128)}\n", "secrets.yml"),
            ("framework secret", "positive", f"app = Flask(__name__)\napp.secret_key = '{g.hex(48)}'\n", "app.py"),
            ("framework secret", "positive", f"APP_KEY=base64:{base64.b64encode(bytes(g.rng.getrandbits(8) for _ in range(32))).decode()}\n", ".env"),
        ]
    rows += [
        ("framework secret", "negative", "SECRET_KEY = os.environ['DJANGO_SECRET_KEY']\n", "settings.py"),
        ("framework secret", "negative", "production:\n  secret_key_base: <%= ENV[\"SECRET_KEY_BASE\"] %>\n", "secrets.yml"),
        ("framework secret", "negative", "APP_KEY=\n", ".env"),
    ]
    return rows


def pem_body(g, lines):
    return "\n".join(base64.b64encode(bytes(g.rng.getrandbits(8) for _ in range(48))).decode() for _ in range(lines))


def key_rows(g, per):
    rows = []
    for _ in range(per):
        rsa = f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body(g, 12)}\n-----END RSA PRIVATE KEY-----\n"
        rows += [
            ("private key", "positive", rsa, "id_rsa"),
            ("private key", "positive", f"-----BEGIN EC PRIVATE KEY-----\n{pem_body(g, 3)}\n-----END EC PRIVATE KEY-----\n", "key.pem"),
            ("private key", "positive", f"-----BEGIN PRIVATE KEY-----\n{pem_body(g, 14)}\n-----END PRIVATE KEY-----\n", "server.key"),
            ("private key", "positive", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n" + pem_body(g, 5) + "\n-----END OPENSSH PRIVATE KEY-----\n", "id_ed25519"),
            ("private key", "positive", f"TLS_KEY_B64={base64.b64encode(rsa.encode()).decode()}\n", None),
        ]
    rows += [
        ("private key", "negative", f"-----BEGIN PUBLIC KEY-----\n{pem_body(g, 6)}\n-----END PUBLIC KEY-----\n", "pub.pem"),
        ("private key", "negative", f"-----BEGIN CERTIFICATE-----\n{pem_body(g, 10)}\n-----END CERTIFICATE-----\n", "cert.pem"),
        ("private key", "negative", "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----\n", "README.md"),
        ("private key", "negative", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + g.b62(43) + " ops@acme\n", "authorized_keys"),
    ]
    return rows


def hash_rows(g, per):
    rows = []
    for _ in range(per):
        digest = hashlib.sha256(g.b62(20).encode()).hexdigest()
        sri = base64.b64encode(hashlib.sha512(g.b62(20).encode()).digest()).decode()
        rows += [
            ("hashes and ids", "negative", f"checksum = \"{digest}\"\n", None),
            ("hashes and ids", "negative", f"\"integrity\": \"sha512-{sri}\",\n", "package-lock.json"),
            ("hashes and ids", "negative", f"commit_token_sha = \"{hashlib.sha1(g.b62(9).encode()).hexdigest()}\"\n", None),
            ("hashes and ids", "negative", f"request_id = \"{g.uuid()}\"\n", None),
            ("hashes and ids", "negative", f"etag: \"{hashlib.md5(g.b62(9).encode()).hexdigest()}\"\n", None),
        ]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--per-template", type=int, default=3)
    args = parser.parse_args()
    g = Gen(args.seed)
    rows = []
    for make in (provider_rows, password_rows, connection_rows, command_rows, config_rows, framework_rows,
                 key_rows, hash_rows):
        rows += make(g, args.per_template)
    for index, (category, label, text, path_hint) in enumerate(rows):
        row = {"id": f"q{index:05d}", "label": label, "category": category, "text": text}
        if path_hint:
            row["path_hint"] = path_hint
        print(json.dumps(row))


if __name__ == "__main__":
    main()
