// Types of the realtime tickets browser client (hand-written; the package has no build step).

export type TurnDetection = {
  type: "server_vad" | "semantic_vad" | "none";
  threshold?: number;
  prefix_padding_ms?: number;
  silence_duration_ms?: number;
};

export interface ToolDefinition {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
}

/** The session config of docs/protocol.md; fields the ticket binds are overwritten by the edge. */
export interface SessionConfig {
  model?: string;
  instructions?: string;
  voice?: string;
  modalities?: Array<"audio" | "text">;
  temperature?: number;
  reasoning_effort?: "minimal" | "low" | "medium" | "high" | "xhigh";
  input_audio_format?: "pcm16";
  output_audio_format?: "pcm16";
  input_transcription?: boolean;
  input_transcription_model?: string;
  output_transcription?: boolean;
  turn_detection?: TurnDetection;
  tools?: ToolDefinition[];
  translation_target_language?: string;
}

/** An update: a field set to `null` is removed. */
export type SessionConfigUpdate = { [K in keyof SessionConfig]?: SessionConfig[K] | null };

export interface ErrorBody {
  code: string;
  message: string;
}

export interface SessionStartedEvent {
  type: "session.started";
  session_id: string;
  model: string | null;
  voice: string | null;
  input_sample_rate: number;
  output_sample_rate: number;
  audio_format: "pcm16";
}
export interface SessionUpdatedEvent {
  type: "session.updated";
}
export interface ResponseStartedEvent {
  type: "response.started";
}
export interface TextDeltaEvent {
  type: "text.delta";
  delta: string;
}
export interface AudioDeltaEvent {
  type: "audio.delta";
  audio: string;
}
export interface SpeechStartedEvent {
  type: "speech.started";
}
export interface SpeechStoppedEvent {
  type: "speech.stopped";
}
export interface TranscriptCommittedEvent {
  type: "transcript.committed";
  transcript: string;
}
export interface ToolCallEvent {
  type: "tool.call";
  tool_call_id: string;
  tool_name: string;
  /** A JSON string. */
  tool_arguments: string;
}
export interface ToolCancelledEvent {
  type: "tool.cancelled";
  tool_call_ids: string[];
}
/** A response ended; a `failed` one follows an `error` that says why. */
export interface ResponseCompletedEvent {
  type: "response.completed";
  status: "completed" | "cancelled" | "failed" | "incomplete" | (string & {});
  /** With `incomplete`: the provider's reason, e.g. `max_output_tokens`. */
  reason?: string;
  usage?: { input_tokens: number; output_tokens: number };
}
/** A refused event; not fatal, except that a refused `session.start` ends this client's session. */
export interface ErrorEvent {
  type: "error";
  error: ErrorBody;
}
export interface SessionTerminatingEvent {
  type: "session.terminating";
  error: ErrorBody;
}

export type ServerEvent =
  | SessionStartedEvent
  | SessionUpdatedEvent
  | ResponseStartedEvent
  | TextDeltaEvent
  | AudioDeltaEvent
  | SpeechStartedEvent
  | SpeechStoppedEvent
  | TranscriptCommittedEvent
  | ToolCallEvent
  | ToolCancelledEvent
  | ResponseCompletedEvent
  | ErrorEvent
  | SessionTerminatingEvent;

export type ClientEvent =
  | { type: "session.start"; config: SessionConfig }
  | { type: "session.update"; config: SessionConfigUpdate }
  | { type: "audio.append"; audio: string }
  | { type: "audio.commit" }
  | { type: "audio.clear" }
  | { type: "text.input"; text: string }
  | { type: "image.input"; image_url: string; image_detail?: "auto" | "low" | "high" }
  | { type: "response.create" }
  | { type: "response.cancel" }
  | { type: "tool.result"; tool_call_id: string; tool_result: string };

export type SessionStatus = "idle" | "connecting" | "started" | "reconnecting" | "closed";

/**
 * Why the session ended for good. The server's own codes (`session.terminating`, or an `error`
 * refusing `session.start`) come through as they are; the client adds the rest.
 */
export type CloseCode =
  | "closed"
  | "closed_by_server"
  | "handshake_failed"
  | "connection_lost"
  | "ticket_replayed"
  | "ticket_unavailable"
  | "invalid_ticket"
  | "invalid_url"
  | "protocol_error"
  | (string & {});

export interface CloseEvent {
  code: CloseCode;
  message: string;
  /** The WebSocket close code, or null when no socket was open (e.g. getTicket failed). */
  closeCode: number | null;
}

export interface ReconnectingEvent {
  attempt: number;
  delayMs: number;
  /** Why: `handshake_failed`, `connection_lost`, `server_shutdown`, `upstream_error`, `ticket_unavailable`. */
  code: string;
  message: string;
  closeCode: number | null;
}

export interface ClientSideEvents {
  status: { status: SessionStatus };
  reconnecting: ReconnectingEvent;
  /** Barge-in: the user spoke while the model answered; the answer was cancelled and flushed. */
  interrupted: Record<string, never>;
  close: CloseEvent;
  /** Every server event, whatever its type. */
  event: ServerEvent;
  /** Every client event sent, `session.start` and `audio.append` included. */
  sent: ClientEvent;
  /** Playback could not start (the worklet failed to load). */
  "audio.failed": { message: string };
}

export type RealtimeEvents = { [E in ServerEvent as E["type"]]: E } & ClientSideEvents;

/** The mint answer (`POST /v3/realtime-sessions`), or the part of it your backend passes on. */
export interface TicketResponse {
  client_secret: string;
  expires_at?: string;
  [member: string]: unknown;
}

export interface ReconnectOptions {
  /** Consecutive attempts without a started session before giving up (default 5). */
  maxAttempts?: number;
  /** First wait (default 500 ms); doubles per attempt, with jitter. */
  baseDelayMs?: number;
  /** Longest wait (default 8000 ms). */
  maxDelayMs?: number;
}

export interface RealtimeSessionOptions {
  /** Asks your backend for a fresh ticket; called once per connection attempt. */
  getTicket: () => Promise<string | TicketResponse>;
  /** The edge's WebSocket URL, e.g. `wss://realtime.example.com/v3/realtime`. */
  url: string;
  /** Sent in `session.start`; kept up to date by `updateConfig` and replayed on reconnect. */
  config?: SessionConfig;
  /** Play `audio.delta` (default true). */
  playback?: boolean;
  /** On `speech.started` while the model answers: `response.cancel` and flush (default true). */
  bargeIn?: boolean;
  /** `false` turns reconnection off. */
  reconnect?: ReconnectOptions | false;
  /** Microphone blocks are dropped while the socket holds more than this (default 1 MiB). */
  maxBufferedBytes?: number;
  /** Playback queue bound in seconds of audio (default 120); past it, audio is dropped. */
  maxQueueSeconds?: number;
}

export interface SessionStats {
  /** Microphone samples sent in `audio.append`, at the input rate. */
  sentSamples: number;
  /** Microphone samples dropped while no session ran or the socket was backed up. */
  droppedSamples: number;
  /** Samples received in `audio.delta`, at the output rate. */
  receivedSamples: number;
  /** Seconds of audio the playback worklet has rendered. */
  playedSeconds: number;
  /** Reconnect attempts scheduled. */
  reconnects: number;
}

export class RealtimeSessionError extends Error {
  readonly code: CloseCode;
}

export class RealtimeSession {
  constructor(options: RealtimeSessionOptions);
  readonly url: string;
  readonly status: SessionStatus;
  /** The last `session.started` (model, voice, rates), null before the first. */
  readonly session: SessionStartedEvent | null;
  readonly config: SessionConfig;
  readonly stats: SessionStats;
  readonly microphoneOn: boolean;

  /** Returns a function that removes the listener. */
  on<K extends keyof RealtimeEvents>(type: K, listener: (event: RealtimeEvents[K]) => void): () => void;
  off<K extends keyof RealtimeEvents>(type: K, listener: (event: RealtimeEvents[K]) => void): void;

  /** Resolves with the first `session.started`; rejects with a `RealtimeSessionError` if none comes. */
  connect(): Promise<SessionStartedEvent>;
  close(): void;

  /** The methods below return false, sending nothing, when no session is running. */
  send(event: ClientEvent): boolean;
  sendText(text: string, options?: { respond?: boolean }): boolean;
  sendToolResult(toolCallId: string, result: unknown, options?: { respond?: boolean }): boolean;
  createResponse(): boolean;
  cancelResponse(): boolean;
  updateConfig(update: SessionConfigUpdate): boolean;

  startMicrophone(constraints?: MediaTrackConstraints): Promise<void>;
  stopMicrophone(options?: { commit?: boolean }): void;
}

export interface Decision {
  retry: boolean;
  code: string;
}

/** The reconnect policy, exported for tests and for apps that want to show it. */
export function decide(close: {
  byClient: boolean;
  opened: boolean;
  started: boolean;
  startError: string | null;
  terminating: string | null;
  closeCode: number;
}): Decision;
export function backoff(
  attempt: number,
  options: { baseDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;
export function ticketOf(value: unknown): string | null;
export function mergeConfig(config: SessionConfig, update: SessionConfigUpdate): SessionConfig;
