"""The redaction rules and the walk over OTLP attributes and values that applies them.

Three kinds of rule, each counted under its own name:
  - ``key:<pattern>``: an attribute whose key matches has its (text, bytes, list or map) value replaced;
  - a credential shape (``openai_key``, ``bearer_token`` …): the matching part of any text value is masked;
  - ``content``: prompt and completion attributes are removed, GenAI message event bodies emptied.

Per item the cost is one dictionary look-up per attribute key (decisions about keys are cached) and, for text
values, one set look-up (short texts found clean before are remembered: names and model ids repeat in every
batch), else one search for literal trigger fragments, then one with a single combined expression only when a
trigger is present; the per-rule substitutions run only when that matches.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from agent.processors.redaction.config import RedactionConfig

MASK = "[REDACTED]"
CONTENT_RULE = "content"
TOO_LONG_RULE = "too_long"
MAX_SCANNED_CHARS = 128 * 1024
# Of a value cut to what is scanned, the end of the scanned part is left out too: a secret there may run on
# past it, where no rule sees its end (a URL's password before its "@", a quoted SQL password). The built-in
# rules' matches are bounded well below this but for a token's run of characters (a JWT of many claims, whose
# rule needs both its dots), which is left out whole when it runs on past the scan.
UNSCANNED_MARGIN = 4 * 1024
_LEADING_TOKEN = re.compile(r"[\w.\-]*")  # of the scanned part reversed: "[\w.-]*\Z" searched forwards is quadratic

# Words that make the name of a value a secret's (``token`` but not token counts, tokenizers or token types).
# A name may go on after the word only with parts that keep it a secret's name (aws_secret_access_key,
# secretKey, apiKeyId, tokenValue, password_hash, password1), so that secretary, tokenized, password_reset,
# token_endpoint or secret_name are not secrets.
_SECRET_NAMES = (
    r"(?:password|passwd|pwd|passphrase|secret|credentials?|api[-_.]?key|apikey|access[-_.]?key|account[-_.]?key"
    r"|subscription[-_.]?key|functions[-_.]?key|private[-_.]?key|signature"
    r"|token(?![._-]?(?:type|count|usage|limit)))"
    r"(?:[._-]?(?:access|key|id|value|hash|enc|encrypted|b64|base64|string|str|text|plain|data|\d{1,4})){0,3}"
)
# A number is a count (max_tokens=512, temperature=0.7), not a secret, unless it is as long as a card number.
_COUNT = r"(?:\d{1,12}|\d{1,6}\.\d{1,6})"
_WORD = r"[A-Za-z][a-z]{1,63}+"  # a word as prose writes it: lowercase, or capitalized
# ... followed by another word or by punctuation; a dot only where it ends the text's token (sl.B0123..., a
# Dropbox or Mapbox token, goes on after its dot).
_PROSE_WORD = _WORD + r"(?:\s+[A-Za-z]|[,;:!?)]|\.(?![A-Za-z0-9\-_~+/]))"
# A value that says there is none, or a placeholder to fill in (token=None, password=null, api_key=<your-key>):
# masking it would hide that the setting was missing, which is what one debugs.
_NO_VALUE = r"(?:None|null|NULL|nil|undefined|<[A-Za-z_\-]{1,64}>)"  # no digit, "=" or ":": <hunter2> is none
# An absolute path of two or more segments after PWD= or OLDPWD= (the shell's working directories), not a
# password; after any other name a value of that shape may well be a secret (an AWS secret key can look so).
_PATH = r"/[\w.\-]{1,255}+(?:/[\w.\-]{0,255}+)+"
# A value that is code, not a secret: a call or a subscript of a (dotted) name, or an attribute of an object,
# as source lines in tracebacks show them (password = os.environ["DB_PASSWORD"], token = self._refresh(session),
# token = self._token, key := os.Getenv("K")).
_CODE = r"(?:[A-Za-z_]\w{0,63}+(?:\.[A-Za-z_]\w{0,63}+){0,8}+[(\[]|(?:self|cls|this|os|ctx)\.[A-Za-z_])"

# Options of a command line before its password flag (-u app, --host=db, -h db, -e 'SHOW TABLES'): each a dash
# and a letter, then at most one value that is not an option; quoted parts may hold spaces.
_CLI_WORD = r"""(?:[^\s|;&<>'"]|'[^'\r\n]{0,256}+'|"[^"\r\n]{0,256}+"){0,256}+"""
_CLI_OPTIONS = (
    r"(?:[ \t]{1,8}+-{1,2}+[A-Za-z]" + _CLI_WORD + r"(?:[ \t]{1,8}+(?![\-\s])(?=[^|;&<>])" + _CLI_WORD + r")?+){0,16}?"
)

# name → (expression, replacement); a replacement keeps a leading group such as "Bearer ".
CREDENTIAL_RULES: dict[str, tuple[str, str]] = {
    # Anthropic's API, admin and OAuth keys (sk-ant-api03-…, sk-ant-admin01-…, sk-ant-oat01-…), before
    # openai_key, whose sk- would otherwise take them and count them as OpenAI's.
    "anthropic_key": (r"(?<![A-Za-z0-9])sk-ant-[a-z]{2,8}\d{2}-[A-Za-z0-9_\-]{20,}", MASK),
    # sk- (OpenAI, DeepSeek, OpenRouter's sk-or-v1-, LiteLLM's virtual keys) and either a
    # random run of at least 12 letters and digits among its first 76 characters, or an upper-case letter, a digit
    # and a lower-case letter among its first 22: "sk-inference-gateway-7d9f8b6c5-x2k4p", a pod, has neither.
    "openai_key": (
        r"(?<![A-Za-z0-9])sk-(?=[A-Za-z0-9_\-]{0,64}[A-Za-z0-9]{12}|(?=[A-Za-z0-9_\-]{0,21}[A-Z])"
        r"(?=[A-Za-z0-9_\-]{0,21}[0-9])(?=[A-Za-z0-9_\-]{0,21}[a-z]))[A-Za-z0-9_\-]{16,}",
        MASK,
    ),
    # A plain word followed by more words or by punctuation after "bearer" or "basic" is prose ("basic
    # configuration for", "bearer authentication failed", "use bearer authentication."), not a credential:
    # random tokens and base64 mix cases or hold digits.
    "bearer_token": (
        r"(\b(?i:bearer)\s+)(?!" + _PROSE_WORD + r")[A-Za-z0-9\-._~+/]{8,}=*",
        r"\1" + MASK,
    ),
    "basic_auth": (
        r"(\b(?i:basic)\s+)(?!" + _PROSE_WORD + r")[A-Za-z0-9+/]{12,}={0,2}",
        r"\1" + MASK,
    ),
    "aws_access_key": (r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b", MASK),
    "github_token": (r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b", MASK),
    "google_api_key": (r"\bAIza[0-9A-Za-z\-_]{35}", MASK),
    "slack_token": (r"\b(?:xox[abprs]|xapp)-[A-Za-z0-9\-]{10,}", MASK),
    # Groq, xAI, LangSmith, Replicate, Perplexity.
    "provider_key": (r"\b(?:gsk_|xai-|lsv2_(?:pt|sk)_|r8_|pplx-)[A-Za-z0-9_]{20,}", MASK),
    # One search per run of token characters: \b allows a start after "-", a token character, and "eyJ-eyJ-…"
    # started a search at every eyJ running to the end of the text, quadratic (2.4 s for 128 KiB). The run's
    # first eyJ at a word start is taken (atomic: a later one ends its first part at the same ".", so fails
    # alike), and what comes before it in the run is kept.
    "jwt": (
        r"(?<![A-Za-z0-9_\-])((?>[A-Za-z0-9_\-]*?(?<!\w)(?=eyJ)))"
        r"eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}",
        r"\1" + MASK,
    ),
    "stripe_key": (r"\b(?:[rs]k_(?:live|test)_|whsec_)[0-9A-Za-z]{10,}", MASK),  # API keys, webhook secrets
    "huggingface_token": (r"\bhf_[A-Za-z0-9]{30,}", MASK),
    "gitlab_token": (r"\bglpat-[A-Za-z0-9_\-]{20,}", MASK),
    "npm_token": (r"\bnpm_[A-Za-z0-9]{36}", MASK),
    "google_oauth_token": (r"\bya29\.[0-9A-Za-z_\-]{20,}", MASK),
    "slack_webhook": (r"(hooks\.slack\.com/services/)[A-Za-z0-9/]+", r"\1" + MASK),
    "private_key": (
        r"-----BEGIN [A-Z ]{0,20}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END [A-Z ]{0,20}PRIVATE KEY(?: BLOCK)?-----|\Z)",
        MASK,
    ),
    # user:password@ in a URL; the user may be empty (redis://:pw@host), and the password runs to the last @ of
    # the URL, as people write passwords with @ or / unescaped (postgres://u:p@ss/w@db). A port is not a
    # password: http://svc:8080/find?email=a@b.c is left alone.
    "url_password": (
        # Possessive runs ({m,n}+): none can end before a ":" or "@" its class excludes, so giving characters back
        # never helps, and "a://:" repeated cost 1.2 µs a character backtracking through every password run.
        r"(\b[A-Za-z][A-Za-z0-9+.\-]{0,30}+://[^/\s:@]{0,256}+:)(?!\d{1,5}(?:[/?#\s]|$)|\[REDACTED\]@)"
        r"[^\s@]{1,256}+(?:@[^\s@]{0,256}+(?=[^\s@]{0,256}@)){0,3}(@)",
        r"\1" + MASK + r"\2",
    ),
    # name=value where the name says secret: query strings (?api_key=, &private_token=, &sig=), connection strings
    # (Password=...;, AccountKey=...;), environment assignments (AWS_SECRET_ACCESS_KEY=...), --token=... flags, INI
    # and credentials files (password = ...), Go (token := ...) and Ruby (:password => ...) (a quoted value is
    # quoted_secret's: the value here never starts with a quote or the ">" of "=>"). A
    # number (max_tokens=512, token_count=9) is a count, not a secret. The match starts at the secret word: what
    # comes before it in the name (db_, aws_) stays as it is without being matched, which keeps the search linear.
    "assigned_secret": (
        r"((?i:"
        + _SECRET_NAMES
        + r"|\bsig|[?&]code)[ \t]{0,8}(?:=>|:=|=)[ \t]{0,8})(?![>=]|\[REDACTED\]|"
        + _CODE
        + r"|(?:"
        + _COUNT
        + r"|(?:(?<=\b(?i:pwd)=)|(?<=\b(?i:oldpwd)=))"
        + _PATH
        + r"|"
        + _NO_VALUE
        + r")(?![^&\s;,'\"]))[^&\s;,'\"]+",
        r"\1" + MASK,
    ),
    # The same with a quoted value, the name quoted or not: JSON ({"db_password": "..."}), a Python dict repr
    # ({'api-key': '...'}), keyword arguments (password="..."), YAML (token: '...'), and JSON inside a JSON string
    # ({\"db_password\": \"...\"}: tool-call arguments), whose escaping the mask keeps.
    "quoted_secret": (
        # No backreference (the matching quote): the rules are also joined into one expression, which renumbers
        # groups.
        r"((?i:" + _SECRET_NAMES + r"|authorization|(?:set-)?cookies?)\\?['\"]?\s{0,8}(?:=>|:=|[=:])\s{0,8}\\?['\"])"
        r"(?!\[REDACTED\])(?:[^'\"\\\r\n]|\\[^'\"\r\n]){1,1024}(?=\\?['\"])",
        r"\1" + MASK,
    ),
    # NAME: value unquoted (YAML, printed settings, log lines: "AZURE_OPENAI_API_KEY: 0123…", "client_secret: …"):
    # keys without a prefix of their own (Azure OpenAI, Cohere, Mistral) show only by their name. A word without
    # a digit and shorter than 16 characters is taken for a setting (password: required), a number for a count.
    "named_secret": (
        r"((?i:"
        + _SECRET_NAMES
        + r")\s{0,8}:[ \t]{1,8})(?!\[REDACTED\]|(?:"
        + _COUNT
        + r"|(?<=\b(?i:pwd):[ \t])"
        + _PATH
        + r")(?![^\s'\",;])"
        # The next word is another secret's name, not the value: "credentials: aws_secret_access_key = ..." (the
        # value is assigned_secret's).
        + r"|[\w.-]{0,40}(?i:"
        + _SECRET_NAMES
        + r")[\w.-]{0,20}\s{0,8}[:=])"
        r"(?=[^\s'\",;]{0,64}\d|[^\s'\",;]{16})[^\s'\",;]{4,1024}",
        r"\1" + MASK,
    ),
    # Go's %+v of a struct ({User:admin Password:s3cret Host:db}): an exported (capitalised) field, no space after
    # the colon, the value up to a space or the closing brace.
    "struct_secret": (
        r"((?<=[{ ])(?=[A-Z])(?i:" + _SECRET_NAMES + r"):)(?!\[REDACTED\]|" + _COUNT + r"(?![^\s}]))"
        r"(?=[^\s}]{0,64}\d|[^\s}]{16})[^\s}]{4,1024}",
        r"\1" + MASK,
    ),
    # SQL: CREATE/ALTER USER|ROLE ... WITH [ENCRYPTED] PASSWORD '...' (PostgreSQL), ... IDENTIFIED [WITH plugin]
    # BY '...' (MySQL; GRANT ... TO u IDENTIFIED BY), USER u IDENTIFIED BY pw or "pw" (Oracle), as a database
    # client logs it or an agent's SQL tool writes it; "password 'reset' flow" or "identified by the team" in
    # prose is not SQL. A quote doubled inside a value is part of it.
    "sql_password": (
        r"(\b(?i:(?:with|encrypted|unencrypted)\s{1,8}password"
        r"|(?:user|role|to)\s{1,8}\S{1,128}+\s{1,8}identified(?:\s{1,8}with\s{1,8}\w{1,64})?\s{1,8}by)"
        r"\s{1,8}['\"]?)(?!\[REDACTED\])"
        r"(?:(?<=')(?:[^'\r\n]|''){1,1024}+(?=')|(?<=\")[^\"\r\n]{1,1024}+(?=\")|(?<![\"'])[^\s;'\",)]{1,1024}+)",
        r"\1" + MASK,
    ),
    # A MySQL or MariaDB client's password, written onto its -p (mysql -u app -pS3cret shop, as a shell tool runs
    # it; "-p" alone prompts, and "-p pw" would read pw as the database), and sshpass's -p pw or -ppw. Only
    # options, each with at most one value, may come between the program and the flag, and for the database
    # clients one bare word, the database (mysql shop -pS3cret): "mysql in prod, gcc -pthread" is prose, and
    # "sshpass -f file ssh -p 22 host" gives ssh a port.
    "cli_password": (
        r"(\b(?:(?:mysql(?:dump|admin|import|show|check|pump|sh)?|mariadb(?:-dump|-admin|-import|-show|-check)?)"
        r"(?![\w.-])" + _CLI_OPTIONS + r"(?:[ \t]{1,8}+[\w$]{1,64}+" + _CLI_OPTIONS + r")?[ \t]{1,8}+-p(?=\S)"
        r"|\bsshpass" + _CLI_OPTIONS + r"[ \t]{1,8}+-p[ \t]{0,8}+))"
        # The password runs to a space or a quote: one written unquoted may hold & < | ; (a command line read
        # from /proc is no shell's), and masking a pipe after it costs nothing.
        r"(?!\[REDACTED\])(?:'[^'\r\n]{1,256}+'|\"[^\"\r\n]{1,256}+\"|[^\s'\"]+)",
        r"\1" + MASK,
    ),
    "flag_secret": (r"(--(?i:password|passwd|api[-_]?key|token|secret)\s{1,8})(?!\[REDACTED\])[^\s-]\S*", r"\1" + MASK),
    # An HTTP header written out as text (a logged request: "Authorization: Token abc", "Cookie: a=1; b=2"):
    # the credential after the scheme word, whatever its length; a cookie header's whole value. A scheme listed
    # here (ApiKey, Key, SharedKey, Splunk) goes with its credential; so does a word of any other scheme when the
    # word after it looks like a credential (letters and digits in its first 64 characters, or 16 characters):
    # "Custom a1b2", not "denied 403" or a date.
    "header_secret": (
        r"(\b(?i:proxy-authorization|authorization|x-api-key|api-key|ocp-apim-subscription-key|x-functions-key"
        r"|x-goog-api-key)\s{0,8}:\s{0,8}((?i:bearer|basic|token|digest)\s{1,8})?)"
        r"(?!\[REDACTED\]|(?i:bearer|basic|token|digest)\s)"
        r"((?i:apikey|key|sharedkey|sharedkeylite|splunk|sso-key|ssws|hmac|aws4-hmac-sha256)[ \t]{1,8})?"
        r"[^\r\n'\"\s]+"
        r"(?(2)|(?(3)|(?:[ \t]{1,8}(?=[^\s'\"]{0,64}\d)(?=[^\s'\"]{0,64}[A-Za-z])[^\r\n'\"\s]+"
        r"|[ \t]{1,8}[^\r\n'\"\s]{16,})?))",
        r"\1" + MASK,
    ),
    # A quoted value is quoted_secret's ({'Cookie': '...'}): not masked twice.
    "cookie_header": (
        r"(\b(?i:set-cookie|cookie)\s{0,8}:(?!\s{0,8}(?:\[REDACTED\]|\\?['\"]))\s{0,8}+)[^\s'\"][^\r\n'\"]*",
        r"\1" + MASK,
    ),
}

# The programs of cli_password, as the first element of an argv (a path or a bare name).
_CLI_PROGRAM = re.compile(
    r"(?:.*/)?(?:mysql(?:dump|admin|import|show|check|pump|sh)?|mariadb(?:-dump|-admin|-import|-show|-check)?|sshpass)"
)

# The bare word the text rule takes for a database client's database (mysql shop -pS3cret).
_DATABASE_NAME = re.compile(r"[\w$]{1,64}")

# Literal fragments at least one of which every credential rule above needs. Searching for them first is about
# three times cheaper than the combined expression, and almost no ordinary value contains one. Keep in step with
# CREDENTIAL_RULES (a test checks that every rule's matches contain a trigger).
CREDENTIAL_TRIGGERS = re.compile(
    r"sk-|(?i:bearer|basic)|A[KSBC][IC]A|gh[pousr]_|github_pat_|AIza|xox|xapp-|eyJ|://|[rs]k_|whsec_|hf_|glpat-|npm_|ya29\."
    r"|gsk_|xai-|lsv2_|r8_|pplx-|[?&](?i:code)[ \t]{0,8}[=:]"
    r"|hooks\.slack|-----BEGIN|(?i:pass|pwd|secret|credential|key|token|sig|authorization|cookie)[\w.-]{0,40}"
    r"\\?['\"]?\s{0,8}[=:]"
    r"|--(?i:pass|api|token|secret)|mysql|mariadb|sshpass|(?i:cookie)\s{0,8}:|(?i:with|encrypted|unencrypted)\s{1,8}(?i:password)|(?i:identified)"
)

# An array element that is only a secret's name (an argv flag such as --api-key, a header name in a
# [name, value] pair): the next element is its value. process.command_args carries the argv that way.
ARRAY_RULE = "array_secret"
_SECRET_NAME_ELEMENT = re.compile(
    r"-{0,2}(?:[A-Za-z0-9]{1,40}[._-]){0,4}(?i:" + _SECRET_NAMES + r"|authorization|proxy-authorization|cookie)"
)
_SECRET_NAME_MAX_LENGTH = 64

_DROP = "drop"
_REDACTABLE = frozenset({"string_value", "bytes_value", "array_value", "kvlist_value"})
_KEY_CACHE_LIMIT = 4096
# Texts seen to hold no credential: span names, model names, step types... repeat in every batch, and a set
# look-up is several times cheaper than the trigger search. Short texts only, so the set stays small.
_CLEAN_CACHE_LIMIT = 8192
_CLEAN_CACHE_MAX_LENGTH = 256


class Redactor:
    """Applies the configured rules in place; ``counts`` collects how often each rule fired."""

    def __init__(self, config: RedactionConfig) -> None:
        self._config = config
        self._key_rules = [(f"key:{p}", re.compile(p, re.IGNORECASE)) for p in config.key_patterns]
        self._allow = frozenset(config.allow_keys)
        self._content_keys = tuple(config.content_keys)
        self._content_prefixes = tuple(k + "." for k in config.content_keys)
        self._content_events = frozenset(config.content_events)
        rules = dict(CREDENTIAL_RULES) if config.mask_credentials else {}
        rules.update({name: (pattern, MASK) for name, pattern in config.value_patterns.items()})
        self._value_rules = [(name, re.compile(pattern), replacement) for name, (pattern, replacement) in rules.items()]
        # Pre-checks that a text may hold a credential: for the built-in shapes a search for literal trigger
        # fragments, then one combined expression; custom patterns are searched one by one, since combining
        # them could renumber their backreferences or misplace their inline flags.
        self._builtin_any = (
            re.compile("|".join(f"(?:{p})" for p, _ in CREDENTIAL_RULES.values())) if config.mask_credentials else None
        )
        self._custom = [re.compile(pattern) for pattern in config.value_patterns.values()]
        self._keys: dict[str, str | None] = {}
        self._clean: set[str] = set()

    # --- keys -------------------------------------------------------------------------------------------------------

    def key_action(self, key: str) -> str | None:
        """``"drop"`` for content, a ``key:`` rule name to redact, or None; cached per key."""
        action = self._keys.get(key, "")
        if action != "":
            return action
        action = self._decide(key)
        if len(self._keys) >= _KEY_CACHE_LIMIT:
            self._keys.clear()
        self._keys[key] = action
        return action

    def _decide(self, key: str) -> str | None:
        if not self._config.capture_content and (key in self._content_keys or key.startswith(self._content_prefixes)):
            return _DROP
        if key in self._allow:
            return None
        for name, pattern in self._key_rules:
            if pattern.search(key):
                return name
        return None

    # --- values -----------------------------------------------------------------------------------------------------

    def mask_text(self, text: str, counts: Counter[str]) -> str:
        if text in self._clean:
            return text
        if len(text) > MAX_SCANNED_CHARS:
            # Scanning costs up to a few µs per character on crafted text, on the event loop: of a value this long
            # (a state dump in a log line; prompts and documents are content, dropped by key before) only the
            # beginning is scanned and kept, as Loki cuts a line too long for it.
            counts[TOO_LONG_RULE] += 1
            if self._custom:  # the operator's shapes may reach any length: nothing of the value is known safe
                return f"{MASK} ({len(text)} characters: too long to scan)"
            kept = self._scanned_beginning(text, counts)
            return f"{kept}…{MASK} (cut from {len(text)} characters: too long to scan whole)"
        if not self._may_hold_credential(text):
            self._remember_clean(text)
            return text
        return self._masked(text, counts)

    def _scanned_beginning(self, text: str, counts: Counter[str]) -> str:
        """The first ``MAX_SCANNED_CHARS`` of ``text`` masked, less their last ``UNSCANNED_MARGIN``, and less a word
        of token characters that runs on past them (of which no rule saw the end)."""
        scanned = text[:MAX_SCANNED_CHARS]
        if self._may_hold_credential(scanned):
            scanned = self._masked(scanned, counts)
        cut = len(scanned) - UNSCANNED_MARGIN
        after = text[MAX_SCANNED_CHARS]
        if after.isalnum() or after in "_.-":
            token = _LEADING_TOKEN.match(scanned[::-1])
            assert token is not None  # the pattern matches, if only the empty run
            cut = min(cut, len(scanned) - token.end())
        return scanned[:cut]

    def _masked(self, text: str, counts: Counter[str]) -> str:
        for name, pattern, replacement in self._value_rules:
            text, found = pattern.subn(replacement, text)
            if found:
                counts[name] += found
        return text

    def _may_hold_credential(self, text: str) -> bool:
        builtin = self._builtin_any
        if builtin is not None and CREDENTIAL_TRIGGERS.search(text) and builtin.search(text):
            return True
        return any(pattern.search(text) for pattern in self._custom)

    @property
    def clean_texts(self) -> set[str]:
        """Texts known to need no masking (callers on a hot path may skip ``mask_text`` for them)."""
        return self._clean

    def _remember_clean(self, text: str) -> None:
        if len(text) <= _CLEAN_CACHE_MAX_LENGTH:
            if len(self._clean) >= _CLEAN_CACHE_LIMIT:
                self._clean.clear()
            self._clean.add(text)

    def attributes(self, attributes: Any, counts: Counter[str]) -> None:
        """Redact a repeated ``KeyValue`` field in place (removing content attributes)."""
        if not attributes:
            return
        dropped: list[int] = []
        keys, clean = self._keys, self._clean
        for index, kv in enumerate(attributes[:]):  # a slice builds the wrappers faster than the iterator
            key = kv.key
            action = keys.get(key, "")
            if action == "":
                action = self.key_action(key)
            if action is None:
                value = kv.value
                # Most values are plain text: read it without asking which field is set (a costlier call).
                text = value.string_value
                if text:
                    if text in clean:
                        continue
                    masked = self.mask_text(text, counts)
                    if masked is not text:
                        value.string_value = masked
                else:
                    self.value(value, counts)
            elif action == _DROP:
                dropped.append(index)
                counts[CONTENT_RULE] += 1
            elif kv.value.WhichOneof("value") in _REDACTABLE and kv.value.string_value != MASK:
                kv.value.string_value = MASK  # setting the oneof clears any other kind
                counts[action] += 1
        for index in reversed(dropped):
            del attributes[index]

    def value(self, value: Any, counts: Counter[str]) -> None:
        """Mask credentials in an ``AnyValue`` (recursing into lists and maps) in place."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            masked = self.mask_text(text, counts)
            if masked is not text:
                value.string_value = masked
        elif kind == "bytes_value":  # SDKs put header values and bodies there as raw bytes
            # surrogateescape: bytes that are not UTF-8 come back unchanged around a masked part.
            text = value.bytes_value.decode("utf-8", "surrogateescape")
            masked = self.mask_text(text, counts)
            if masked is not text:
                value.bytes_value = masked.encode("utf-8", "surrogateescape")
        elif kind == "kvlist_value":
            self.attributes(value.kvlist_value.values, counts)
        elif kind == "array_value":
            items = value.array_value.values
            if self._config.mask_credentials:
                self._mask_argv_password(items, counts)
            value_of_a_secret = False
            for item in items:
                text = item.string_value
                if value_of_a_secret and text and text != MASK and not text.startswith("-"):  # not the next flag
                    item.string_value = MASK
                    counts[ARRAY_RULE] += 1
                    value_of_a_secret = False
                    continue
                self.value(item, counts)
                value_of_a_secret = bool(
                    text
                    and self._config.mask_credentials
                    and len(text) <= _SECRET_NAME_MAX_LENGTH
                    and _SECRET_NAME_ELEMENT.fullmatch(text)
                )

    @staticmethod
    def _mask_argv_password(items: Any, counts: Counter[str]) -> None:
        """cli_password on an argv (``process.command_args``: ["mysql", "-u", "app", "-pS3cret"], also run through
        sudo, docker exec or kubectl exec): the options after the client's name are read as the text rule reads a
        command line, each with at most one value (and for a database client one bare word, the database), up to
        the first argument that is none of these."""
        start = next((i for i, item in enumerate(items) if _CLI_PROGRAM.fullmatch(item.string_value)), None)
        if start is None:
            return
        sshpass = items[start].string_value.endswith("sshpass")
        databases_left = 0 if sshpass else 1
        after_option = False
        for index in range(start + 1, len(items)):
            text = items[index].string_value
            if text.startswith("-p") and text != "-p" + MASK:
                if len(text) > 2:
                    items[index].string_value = "-p" + MASK
                    counts["cli_password"] += 1
                elif sshpass and index + 1 < len(items) and items[index + 1].string_value not in ("", MASK):
                    items[index + 1].string_value = MASK
                    counts["cli_password"] += 1
                return
            if text.startswith("-") and len(text) > 1:
                after_option = True
            elif after_option:
                after_option = False
            elif databases_left and _DATABASE_NAME.fullmatch(text):
                databases_left -= 1
            else:
                return

    def is_content_event(self, name: str) -> bool:
        return not self._config.capture_content and name in self._content_events
