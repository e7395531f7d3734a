"""login throttle, session-to-browser binding, canonical logins

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:00:00

- login_throttle: atomic failed-login counters per (login, address) and per address
  (replaces counting login_attempts rows, which let parallel guesses through);
- auth_sessions.browser_hash: a session token works only with the secret of the browser that
  logged in (NULL for sessions opened before this revision and through the library);
- clinicians.login: existing logins rewritten to the canonical form (NFKC + casefold) used
  from now on, unless that form is already taken (then the login stays as it was).
"""
from typing import Sequence, Union
import unicodedata

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('login_throttle',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_allowed', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_t', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('browser_hash', sa.String(length=64), nullable=True))

    conn = op.get_bind()
    clinicians = sa.table('clinicians', sa.column('id', sa.Integer), sa.column('login', sa.String))
    rows = list(conn.execute(sa.select(clinicians.c.id, clinicians.c.login).order_by(clinicians.c.id)))
    taken = {login for _, login in rows}
    for cid, login in rows:
        canon = unicodedata.normalize("NFKC", login or "").casefold().strip()
        if canon and canon != login and canon not in taken:
            conn.execute(sa.update(clinicians).where(clinicians.c.id == cid).values(login=canon))
            taken.discard(login)
            taken.add(canon)


def downgrade() -> None:
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_column('browser_hash')
    op.drop_table('login_throttle')
