"""Password policy for new accounts: a minimum length, no all-blank passwords, none of the most
common passwords (a short list shipped here, also with digits or punctuation appended), no
single repeated character and not the login itself."""
from __future__ import annotations

import unicodedata

from study.errors import InvalidInput

MIN_PASSWORD = 8
MAX_PASSWORD = 1024

# The most common passwords of the public breach compilations (RockYou, the yearly "worst
# passwords" lists), plus words an attacker of a clinical study tries first. Matched after
# NFKC + casefold, and also with trailing digits / punctuation removed ("Password123!" ->
# "password"), so the short words below stand for their many numbered variants.
_COMMON = """
123456 123456789 12345678 12345 1234567 1234567890 123123 1234 111111 000000 654321 666666 121212
112233 123321 987654321 11111111 88888888 87654321 12344321 11223344 147258369 159753 123654 789456
123qwe 1q2w3e4r 1q2w3e4r5t 1q2w3e 1qaz2wsx zaq12wsx qazwsx qazwsxedc qwerty qwertyuiop qwerty123
qwertz azerty asdfgh asdfghjkl asdf zxcvbnm zxcvbn 1qazxsw2 q1w2e3r4 a1b2c3d4 abc123 abcd1234 abcdef
abcdefg abcdefgh password passw0rd p@ssw0rd p@ssword pa55word pass passwort motdepasse contraseña
password1 password12 password123 password1234 mypassword secret secret123 letmein letmein123 welcome
welcome1 welcome123 login admin admin123 administrator root toor guest user default changeme
changeit test test123 testing tester demo iloveyou iloveu loveyou lovely love monkey dragon master
sunshine princess shadow superman batman football baseball basketball soccer hockey jordan jordan23
michael jennifer hunter hunter2 killer trustno1 whatever freedom ninja mustang access starwars
charlie donald daniel thomas robert andrew joshua jessica ashley nicole michelle amanda samantha
matthew anthony william george hannah bailey buster harley ginger pepper maggie chelsea arsenal
liverpool barcelona manchester yankees cowboys eagles tigers lakers 696969 qwe123 qweasd qweasdzxc
zaq1xsw2 computer internet samsung apple google microsoft windows linux ubuntu facebook youtube
twitter instagram linkedin iphone android nothing summer winter spring autumn flower flowers
purple orange banana cheese chocolate cookie coffee pizza chicken pokemon naruto hello hello123
hellohello helloworld lol123 lovelove babygirl baby angel angels friends family forever
blessed jesus christ godisgood heaven trinity matrix hacker hackme zxcvbnm123 secure security
safety private personal confidential office work company business money dollar diamond gold silver
1password 2password password! password. qwerty! letmein! 5555555 7777777 999999 1111111 123454321
00000000 12121212 asdasd asdasdasd qweqwe qweqweqwe zxczxc aaaaaa abc12345 a123456 a12345678
aa123456 qwerty1 qwerty12 q1w2e3 1234qwer 1234abcd abcd abc qwer asdf1234 zxcv1234 pass1234
pass123 passpass password01 passwd admin1 admin12 admin1234 adminadmin root123 rootroot user123
useruser guest123 test1234 testtest demo123 sample example temp temp123 temporary newpass newpassword
oldpassword mypass mysecret doctor nurse hospital clinic clinical medicine medical health
patient surgeon surgery radiology radiologist oncology rectum rectal cancer tumor tumour study
research science usam usamstudio segment segmentation annotation reader observer gradio huggingface
ready2go getmein opensesame abracadabra letmein1 iloveyou1 iloveyou2 princess1 sunshine1 monkey1
football1 baseball1 superman1 batman1 dragon1 master1 shadow1 michael1 charlie1 jessica1 ashley1
""".split()
COMMON_PASSWORDS = frozenset(unicodedata.normalize("NFKC", w).casefold() for w in _COMMON)
_TRAILING = "0123456789!@#$%^&*()-_=+.,;:?~ "


def check_password(password: object, login: str = "") -> str:
    """The password unchanged, or InvalidInput with the reason it may not be used."""
    if not isinstance(password, str):
        raise InvalidInput("The password must be text.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput("Password too long.")
    if not password.strip():
        raise InvalidInput("A password cannot be only spaces.")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"Passwords need at least {MIN_PASSWORD} characters.")
    folded = unicodedata.normalize("NFKC", password).casefold()
    core = folded.rstrip(_TRAILING)
    if folded in COMMON_PASSWORDS or core in COMMON_PASSWORDS or folded.strip() in COMMON_PASSWORDS:
        raise InvalidInput("This password is one of the most common ones; choose another.")
    if len(set(folded)) == 1:
        raise InvalidInput("A password cannot be one character repeated.")
    if login and (folded == login or core == login):
        raise InvalidInput("The password cannot be the login.")
    return password
