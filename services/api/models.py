"""Request bodies (validated) and response shapes (for the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from denorm.ids import MAX_ID
from services.api.feed import Sort

Id = Field(gt=0, le=MAX_ID)


def _storable(text: str) -> str:
    """Text Postgres can store: UTF-8 encodable (no lone surrogate, which JSON's \\ud800 escapes
    can carry) and without NUL."""
    if "\x00" in text:
        raise ValueError("text may not contain NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text may not contain a lone surrogate") from exc
    return text


# Every text a request body carries, wherever it sits (a field, a list item).
Text = Annotated[str, AfterValidator(_storable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------


class NewProject(Strict):
    title: Text = Field(min_length=1, max_length=200)
    tagline: Text = Field(default="", max_length=300)
    description: Text = Field(default="", max_length=20000)
    tags: list[Text] = Field(default_factory=list, max_length=20)


class NewComment(Strict):
    body: Text = Field(min_length=1, max_length=10000)


class NewMessage(Strict):
    recipient_id: int = Id
    body: Text = Field(min_length=1, max_length=5000)


class MarkRead(Strict):
    other_user_id: int = Id


class NewIntroRequest(Strict):
    target_id: int = Id
    project_id: int | None = Field(default=None, gt=0, le=MAX_ID)
    message: Text = Field(default="", max_length=2000)


class NewThread(Strict):
    title: Text = Field(min_length=1, max_length=200)
    body: Text = Field(default="", max_length=20000)


class NewPost(Strict):
    body: Text = Field(min_length=1, max_length=20000)


# --- responses --------------------------------------------------------------------------------


class FeedItem(BaseModel):
    id: int
    owner_id: int
    username: str
    title: str
    tagline: str
    tags: list[str]
    upvote_count: int
    comment_count: int
    trending_score: float
    proof_score: float
    created_at: datetime
    user_has_upvoted: bool | None = None


class FeedPage(BaseModel):
    items: list[FeedItem]
    sort: Sort
    page: int | None
    next_cursor: str | None
    as_of: datetime | None = Field(description="the feed's order reflects every write committed before this")


class UpvoteState(BaseModel):
    upvoted: bool
    upvote_count: int


class ProjectLeader(BaseModel):
    rank: int
    project_id: int
    title: str
    owner_id: int
    username: str
    upvote_count: int
    comment_count: int


class ProjectLeaderboard(BaseModel):
    items: list[ProjectLeader]
    as_of: datetime | None


class UserLeader(BaseModel):
    rank: int
    user_id: int
    username: str
    display_name: str
    upvotes_received: int
    project_count: int


class UserLeaderboard(BaseModel):
    items: list[UserLeader]
    as_of: datetime | None


class Dashboard(BaseModel):
    user_id: int
    project_count: int
    upvotes_received: int
    comments_received: int
    upvotes_given: int
    unread_messages: int
    pending_intros_received: int
    chains_joined: int
    updated_at: datetime | None
    intro_stats: dict[str, int]


class Chain(BaseModel):
    chain_id: int
    slug: str
    name: str
    description: str
    owner_username: str
    project_count: int
    member_count: int
    thread_count: int
    last_activity_at: datetime | None


class ChainList(BaseModel):
    items: list[Chain]
    next_cursor: str | None
    as_of: datetime | None


class ChainProject(BaseModel):
    project_id: int
    title: str
    tagline: str
    username: str
    upvote_count: int
    comment_count: int
    added_at: datetime


class ChainThread(BaseModel):
    thread_id: int
    title: str
    author_username: str
    post_count: int
    last_post_at: datetime | None
    last_activity_at: datetime | None
    created_at: datetime


Cursor = Field(description="continues after the last item (the same route with ?cursor=); null after the last page")


class ChainDetail(BaseModel):
    chain: Chain
    projects: list[ChainProject]
    projects_next_cursor: str | None = Field(description="GET /api/chains/{slug}/projects?cursor= continues")
    threads: list[ChainThread]
    threads_next_cursor: str | None = Field(description="GET /api/chains/{slug}/threads?cursor= continues")
    as_of: datetime | None


class ChainProjectPage(BaseModel):
    items: list[ChainProject]
    next_cursor: str | None = Cursor
    as_of: datetime | None


class ChainThreadPage(BaseModel):
    items: list[ChainThread]
    next_cursor: str | None = Cursor
    as_of: datetime | None


class Comment(BaseModel):
    id: int
    author_id: int
    author_username: str
    body: str
    created_at: datetime


class CommentPage(BaseModel):
    items: list[Comment]
    next_cursor: str | None = Cursor


class Owner(BaseModel):
    id: int
    username: str
    display_name: str


class ProjectPage(BaseModel):
    id: int
    owner_id: int
    username: str
    owner: Owner
    title: str
    tagline: str
    description: str
    tags: list[str]
    upvote_count: int = Field(description="exact at this instant")
    comment_count: int = Field(description="exact at this instant")
    trending_score: float = Field(description="as the feed has it, as of the fold")
    proof_score: float = Field(description="as the feed has it, as of the fold")
    created_at: datetime
    updated_at: datetime
    user_has_upvoted: bool | None = Field(description="with a token: whether the caller upvoted it")
    comments: CommentPage = Field(description="the newest comments; GET /api/projects/{id}/comments?cursor= continues")
    as_of: datetime | None = Field(description="the scores reflect every write committed before this")


class Thread(BaseModel):
    id: int
    chain_id: int
    chain_slug: str
    chain_name: str
    title: str
    body: str
    author_id: int
    author_username: str
    created_at: datetime


class Post(BaseModel):
    id: int
    author_id: int
    author_username: str
    body: str
    created_at: datetime


class ThreadPage(BaseModel):
    thread: Thread
    posts: list[Post] = Field(description="oldest first")
    next_cursor: str | None = Cursor


class SearchHit(BaseModel):
    type: Literal["project", "user", "chain"]
    id: int
    title: str
    subtitle: str | None
    slug: str | None
    score: float = Field(description="the tier (2: every word in the title or name; 1: elsewhere) + popularity / 100")


class SearchResults(BaseModel):
    query: str
    corrected: str | None
    items: list[SearchHit]
    next_cursor: str | None = Field(description="the query parameters that continue after the last item")
    as_of: datetime | None


class Conversation(BaseModel):
    other_user_id: int
    other_username: str
    last_message_id: int | None
    last_message_at: datetime | None
    last_message_preview: str | None
    last_sender_id: int | None
    message_count: int
    unread_count: int


class Conversations(BaseModel):
    items: list[Conversation]


class Message(BaseModel):
    id: int
    sender_id: int
    recipient_id: int
    body: str
    created_at: datetime
    read_at: datetime | None


class MessagePage(BaseModel):
    other_user: Owner
    items: list[Message] = Field(description="newest first")
    next_cursor: str | None = Cursor


class IntroRequest(BaseModel):
    id: int
    requester_id: int
    requester_username: str
    target_id: int
    target_username: str
    project_id: int | None
    message: str
    status: Literal["pending", "accepted", "declined"]
    created_at: datetime
    responded_at: datetime | None


class IntroRequestPage(BaseModel):
    box: Literal["received", "sent"]
    status: Literal["pending", "accepted", "declined"] | None
    items: list[IntroRequest] = Field(description="newest first")
    next_cursor: str | None = Cursor


class UserProfile(BaseModel):
    user_id: int
    username: str
    display_name: str
    bio: str
    created_at: datetime
    project_count: int = Field(description="exact at this instant")
    upvotes_received: int = Field(description="exact at this instant")
    chains_joined: int = Field(description="exact at this instant")


class Created(BaseModel):
    id: int


class Changed(BaseModel):
    changed: int


class QueueState(BaseModel):
    status: Literal["idle", "pending"]
    refresh_requested_at: datetime | None
    first_requested_at: datetime | None
    last_refreshed_at: datetime | None
    last_refresh_duration_ms: int | None
    attempts: int
    last_error: str | None


class ReadModelStatus(BaseModel):
    name: str
    kind: Literal["ledger", "fold", "matview", "redis"]
    file: str = Field(description="where it is defined")
    bound_seconds: float = Field(description="how stale it may be; 0: exact at every commit")
    as_of: datetime | None = Field(description="every write committed before this is in it (none: exact)")
    staleness_seconds: float
    over_bound: bool
    queue: QueueState | None = Field(description="the refresh queue row that schedules it, if it is refreshed")


class FoldState(BaseModel):
    as_of: datetime | None
    folded_at: datetime | None
    duration_ms: int | None


class RefreshStatus(BaseModel):
    read_models: list[ReadModelStatus]
    fold: FoldState


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    postgres: str
    schema_: str = Field(alias="schema")
    redis: str
    redis_breaker: Literal["closed", "half_open", "open"]
    read_pipeline: str = Field(description="pipelined read connections up, as 'n/m up'")
    replica: str | None = Field(default=None, description="with DATABASE_READ_URL: ok or bypassed, and its lag")
